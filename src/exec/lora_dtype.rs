//! Element type the executor reads adapters in (`--lora-dtype`). `Auto` is exact where the base
//! is exact: f32 adapters next to float weights (the reference path), int8 (a scale per rank row
//! of `A` and per rank of `B`) next to block-quantized weights, whose products already round
//! the activations (a quarter of the bytes a token reads for its adapter; the quantized fidelity
//! tests give the same figures as with bf16: 576/576 top-1, 18/18 exact).

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoraDtype {
    #[default]
    Auto,
    F32,
    BF16,
    /// int8 with a scale per rank row of `A` and per rank of `B` (a quarter of f32's bytes).
    Int8,
}

impl LoraDtype {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => LoraDtype::Auto,
            "f32" | "fp32" | "float32" => LoraDtype::F32,
            "bf16" | "bfloat16" => LoraDtype::BF16,
            "int8" => LoraDtype::Int8,
            other => {
                return Err(Error::invalid(
                    "lora_dtype",
                    format!("`{other}` (expected auto, f32, bf16 or int8)"),
                ))
            }
        })
    }

    /// `Auto` made concrete: int8 when some projection is block-quantized.
    pub fn resolve(self, block_quantized: bool) -> LoraDtype {
        match (self, block_quantized) {
            (LoraDtype::Auto, true) => LoraDtype::Int8,
            (LoraDtype::Auto, false) => LoraDtype::F32,
            (d, _) => d,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LoraDtype::Auto => "auto",
            LoraDtype::F32 => "f32",
            LoraDtype::BF16 => "bf16",
            LoraDtype::Int8 => "int8",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_weights_and_bad_names_are_refused() {
        assert_eq!(
            LoraDtype::parse("auto").unwrap().resolve(true),
            LoraDtype::Int8
        );
        assert_eq!(
            LoraDtype::parse("auto").unwrap().resolve(false),
            LoraDtype::F32
        );
        assert_eq!(
            LoraDtype::parse("f32").unwrap().resolve(true),
            LoraDtype::F32
        );
        assert_eq!(
            LoraDtype::parse("bfloat16").unwrap().resolve(false),
            LoraDtype::BF16
        );
        assert_eq!(
            LoraDtype::parse("int8").unwrap().resolve(false),
            LoraDtype::Int8
        );
        assert!(LoraDtype::parse("f8").is_err());
    }
}
