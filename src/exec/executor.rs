//! The executor contract. An executor owns everything that lives on its device — the model's
//! weights in their run-time layout, the KV storage, its copy of the adapter slot pool — and runs
//! `StepPlan`s. It knows nothing of requests, adapter names or HTTP; the engine knows nothing of
//! how a step runs.

use super::StepPlan;
use crate::error::{Error, Result};
use crate::model::{ModelConfig, WeightDtype};

/// Element type of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    /// f32 with f32 weights (the exact reference path), f16 otherwise.
    #[default]
    Auto,
    F16,
    BF16,
    F32,
}

impl KvDtype {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => KvDtype::Auto,
            "f16" | "fp16" | "float16" => KvDtype::F16,
            "bf16" | "bfloat16" => KvDtype::BF16,
            "f32" | "fp32" | "float32" => KvDtype::F32,
            other => {
                return Err(Error::invalid(
                    "kv_cache_dtype",
                    format!("`{other}` (expected auto, f16, bf16 or f32)"),
                ))
            }
        })
    }

    /// `Auto` made concrete for weights loaded as `weights`.
    pub fn resolve(self, weights: WeightDtype) -> KvDtype {
        match (self, weights) {
            (KvDtype::Auto, WeightDtype::F32) => KvDtype::F32,
            (KvDtype::Auto, _) => KvDtype::F16,
            (d, _) => d,
        }
    }

    /// Bytes of the K and V of one token across all layers of `model`.
    pub fn bytes_per_token(self, model: &ModelConfig) -> usize {
        model.layers * 2 * model.kv_heads * model.head_dim * self.bytes()
    }

    /// Bytes of one cached element.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            _ => 2,
        }
    }
}

/// What an executor is built with.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    pub num_blocks: usize,
    pub block_size: usize,
    pub kv_dtype: KvDtype,
    /// Which executor (`exec::create` resolves `Auto`).
    pub device: super::DeviceKind,
    /// Largest adapter rank the device executor's slot pool takes.
    pub max_lora_rank: usize,
    /// Element type adapters are read in (`--lora-dtype`; the CPU executor).
    pub lora_dtype: super::LoraDtype,
    /// The device executor keeps block-quantized projections as candle `QMatMul`s (`--qmatmul`)
    /// instead of dequantizing them at load (the default, the accurate path).
    pub qmatmul: bool,
}

pub trait Executor: Send {
    /// Runs one step, writing the rows' K/V into their slots; returns `[logit_rows, vocab]` logits.
    fn step(&mut self, plan: &StepPlan) -> Result<Vec<f32>>;

    /// One line for the startup log: device, weight formats, KV dtype and size.
    fn describe(&self) -> String;

    /// The largest adapter rank this executor can run (`None`: any). The device executor's slot
    /// pool is allocated at `--max-lora-rank`; the CPU executor reads adapters as loaded.
    fn max_lora_rank(&self) -> Option<usize> {
        None
    }
}
