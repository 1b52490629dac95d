//! Which executor runs the model: `--device auto|cpu|cuda[:N]|candle-cpu`. Parsed once at the edge;
//! `Auto` is resolved by `exec::create`, which logs the choice and why.

use crate::error::{Error, Result};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    /// CUDA when the build has it and a GPU answers, else the CPU executor.
    #[default]
    Auto,
    /// The CPU executor (f32 reference + quantized kernels).
    Cpu,
    /// The device executor on CUDA device `N`.
    Cuda(usize),
    /// The device executor on candle's CPU device, f32: the CUDA path's twin in CI.
    CandleCpu,
}

impl DeviceKind {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "device",
                format!("`{s}` (expected auto, cpu, cuda, cuda:N or candle-cpu)"),
            )
        };
        Ok(match s {
            "auto" => DeviceKind::Auto,
            "cpu" => DeviceKind::Cpu,
            "candle-cpu" => DeviceKind::CandleCpu,
            "cuda" => DeviceKind::Cuda(0),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => DeviceKind::Cuda(n.parse().map_err(|_| bad())?),
                None => return Err(bad()),
            },
        })
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceKind::Auto => f.write_str("auto"),
            DeviceKind::Cpu => f.write_str("cpu"),
            DeviceKind::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceKind::CandleCpu => f.write_str("candle-cpu"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DeviceKind;

    #[test]
    fn parses_every_form_and_round_trips() {
        for (s, d) in [
            ("auto", DeviceKind::Auto),
            ("cpu", DeviceKind::Cpu),
            ("candle-cpu", DeviceKind::CandleCpu),
            ("cuda:3", DeviceKind::Cuda(3)),
        ] {
            assert_eq!(DeviceKind::parse(s).unwrap(), d);
            assert_eq!(d.to_string(), s);
        }
        assert_eq!(DeviceKind::parse("cuda").unwrap(), DeviceKind::Cuda(0));
        for bad in ["gpu", "cuda:", "cuda:x", ""] {
            assert!(DeviceKind::parse(bad).is_err(), "{bad}");
        }
    }
}
