//! The learning rate of each optimizer step: linear warm-up to the peak over `warmup` steps, then
//! linear or cosine decay towards 0 (never reaching it on the last step), or constant.

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decay {
    Linear,
    Cosine,
    Constant,
}

impl Decay {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "linear" => Ok(Decay::Linear),
            "cosine" => Ok(Decay::Cosine),
            "constant" => Ok(Decay::Constant),
            other => Err(Error::invalid(
                "lr_scheduler",
                format!("`{other}` (expected linear, cosine or constant)"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Decay::Linear => "linear",
            Decay::Cosine => "cosine",
            Decay::Constant => "constant",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub peak: f64,
    pub warmup: usize,
    pub total: usize,
    pub decay: Decay,
}

impl LrSchedule {
    /// The learning rate of step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let progress = ((step - self.warmup) as f64 / span as f64).min(1.0);
        match self.decay {
            Decay::Constant => self.peak,
            Decay::Linear => self.peak * (1.0 - progress),
            Decay::Cosine => self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        for decay in [Decay::Linear, Decay::Cosine] {
            let s = LrSchedule {
                peak: 1.0,
                warmup: 4,
                total: 14,
                decay,
            };
            let lrs: Vec<f64> = (0..14).map(|i| s.lr(i)).collect();
            assert_eq!(&lrs[..4], &[0.25, 0.5, 0.75, 1.0]);
            assert_eq!(lrs[4], 1.0);
            assert!(
                lrs[4..].windows(2).all(|w| w[1] < w[0]),
                "{decay:?} decays: {lrs:?}"
            );
            assert!(lrs[13] > 0.0);
            // Halfway through the decay both schedules are at half the peak.
            assert!((s.lr(9) - 0.5).abs() < 1e-12, "{decay:?}");
        }
        let c = LrSchedule {
            peak: 2.0,
            warmup: 0,
            total: 5,
            decay: Decay::Constant,
        };
        assert!((0..5).all(|i| c.lr(i) == 2.0));
    }
}
