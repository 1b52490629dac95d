//! The `--activations` choice made at load: one [`ActPrecision`] for every block-quantized matrix
//! (projections and output head), or `Auto`, the accurate one. Float weights always see f32.

use crate::error::{Error, Result};
use crate::ops::cpu::quant::ActPrecision;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActivationMode {
    #[default]
    Auto,
    Fixed(ActPrecision),
}

impl ActivationMode {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => ActivationMode::Auto,
            "int8" | "i8" | "q8" => ActivationMode::Fixed(ActPrecision::Int8),
            "int16" | "i16" => ActivationMode::Fixed(ActPrecision::Int16),
            other => {
                return Err(Error::invalid(
                    "activations",
                    format!("`{other}` (expected auto, int8 or int16)"),
                ))
            }
        })
    }

    /// The precision every quantized matrix gets.
    pub fn resolve(self) -> ActPrecision {
        match self {
            ActivationMode::Auto => ActPrecision::Int16,
            ActivationMode::Fixed(p) => p,
        }
    }
}
