//! Engine configuration, validated once by `EngineConfig::validate` before the engine starts.

use crate::error::{Error, Result};
use crate::exec::{DeviceKind, KvDtype, LoraDtype};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Token slots per KV block.
    pub block_size: usize,
    /// KV cache size in blocks.
    pub num_blocks: usize,
    /// Tokens (prefill + decode) per forward step.
    pub max_batch_tokens: usize,
    /// Token-equivalents a step may cost while sequences are decoding (bounds inter-token latency
    /// during long prefills; see `engine::scheduler`).
    pub max_step_cost: usize,
    /// Sequences running at once.
    pub max_num_seqs: usize,
    /// Distinct adapters in one step.
    pub max_adapters_per_step: usize,
    /// Element type of the KV cache.
    pub kv_dtype: KvDtype,
    /// Reuse the KV blocks of cached prompt prefixes (per adapter identity; see `kv_cache`).
    pub enable_prefix_caching: bool,
    /// Which executor runs the steps (`--device`).
    pub device: DeviceKind,
    /// Largest adapter rank the device executor's slot pool takes (`--max-lora-rank`; default 16,
    /// vLLM's): the pool is allocated up front at this rank, so it sizes the pool. Requests naming
    /// an adapter above it are refused at admission on the device executor.
    pub max_lora_rank: usize,
    /// Element type adapters are read in (`--lora-dtype`).
    pub lora_dtype: LoraDtype,
    /// Device executor: block-quantized projections as candle `QMatMul`s (`--qmatmul`).
    pub qmatmul: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            num_blocks: 1024,
            max_batch_tokens: 512,
            max_step_cost: 128,
            max_num_seqs: 64,
            max_adapters_per_step: 16,
            kv_dtype: KvDtype::Auto,
            enable_prefix_caching: true,
            device: DeviceKind::Cpu,
            max_lora_rank: 16,
            lora_dtype: LoraDtype::Auto,
            qmatmul: false,
        }
    }
}

impl EngineConfig {
    pub fn validate(&self) -> Result<()> {
        let pos = |v: usize, name: &str| {
            if v == 0 {
                Err(Error::invalid(name, "must be > 0"))
            } else {
                Ok(())
            }
        };
        pos(self.block_size, "block_size")?;
        pos(self.num_blocks, "num_blocks")?;
        pos(self.max_batch_tokens, "max_batch_tokens")?;
        pos(self.max_step_cost, "max_step_cost")?;
        pos(self.max_num_seqs, "max_num_seqs")?;
        pos(self.max_lora_rank, "max_lora_rank")?;
        pos(self.max_adapters_per_step, "max_adapters_per_step")
    }

    /// Blocks that fit `bytes` of KV memory for a model with this per-token footprint.
    pub fn blocks_for_memory(&self, bytes: usize, bytes_per_token: usize) -> usize {
        (bytes / (bytes_per_token * self.block_size)).max(1)
    }
}
