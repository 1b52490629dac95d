//! A training run's settings, checked once (`checked`); the trainer relies on every bound here.

use super::adamw::AdamWConfig;
use super::lora_params::LoraSettings;
use super::lr_schedule::Decay;
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub lora: LoraSettings,
    pub epochs: usize,
    /// Examples per forward pass.
    pub batch_size: usize,
    /// Forward passes whose gradients are summed into one optimizer step.
    pub grad_accum: usize,
    pub lr: f64,
    /// Fraction of the steps spent warming up (linear from ~0 to `lr`).
    pub warmup_ratio: f64,
    pub decay: Decay,
    pub adamw: AdamWConfig,
    /// Clip the gradients' global norm to this (0 = off).
    pub max_grad_norm: f64,
    /// Tokens per example (longer ones are truncated).
    pub max_seq_len: usize,
    pub seed: u64,
    /// Save a checkpoint every this many steps (0 = only at the end of each epoch).
    pub checkpoint_every: usize,
}

impl TrainConfig {
    /// Defaults for a LoRA run (PEFT/TRL-like: rank 8, alpha 16, AdamW 1e-4 cosine, 3 epochs).
    pub fn new(lora: LoraSettings) -> Self {
        TrainConfig {
            lora,
            epochs: 3,
            batch_size: 4,
            grad_accum: 1,
            lr: 1e-4,
            warmup_ratio: 0.1,
            decay: Decay::Linear,
            adamw: AdamWConfig::default(),
            max_grad_norm: 1.0,
            max_seq_len: 1024,
            seed: 42,
            checkpoint_every: 0,
        }
    }

    pub fn checked(mut self) -> Result<Self> {
        self.lora = self.lora.checked()?;
        let bad = |p: &str, m: &str| Err(Error::invalid(p, m));
        if !(1..=1000).contains(&self.epochs) {
            return bad("n_epochs", "must be in 1..=1000");
        }
        if !(1..=256).contains(&self.batch_size) {
            return bad("batch_size", "must be in 1..=256");
        }
        if !(1..=1024).contains(&self.grad_accum) {
            return bad("grad_accum", "must be in 1..=1024");
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= 1.0) {
            return bad("learning_rate", "must be in (0, 1]");
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad("warmup_ratio", "must be in [0, 1)");
        }
        let a = &self.adamw;
        if !((0.0..1.0).contains(&a.beta1) && (0.0..1.0).contains(&a.beta2) && a.eps > 0.0) {
            return bad("adamw", "betas must be in [0, 1) and eps > 0");
        }
        if !(a.weight_decay >= 0.0 && a.weight_decay.is_finite()) {
            return bad("weight_decay", "must be >= 0");
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return bad("max_grad_norm", "must be >= 0");
        }
        if self.max_seq_len < 2 {
            return bad("max_seq_len", "must be at least 2");
        }
        Ok(self)
    }

    /// Examples per optimizer step.
    pub fn examples_per_step(&self) -> usize {
        self.batch_size * self.grad_accum
    }

    /// A stable text of every setting that changes the result (a checkpoint resumes only a run
    /// with the same one).
    pub fn fingerprint(&self) -> String {
        format!("{self:?}")
    }
}
