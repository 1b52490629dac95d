//! One generation in flight. `tokens` is prompt + output; `computed` counts the leading tokens
//! whose K/V are in the cache (always <= tokens.len()). Preemption drops the block table and
//! resets `computed` to 0: the sequence is recomputed later with the same tokens and RNG state.

use super::detokenizer::Detokenizer;
use super::request::{GenerateRequest, SamplingParams};
use super::sampler::Sampler;
use crate::kv_cache::BlockTable;
use crate::lora::LoraAdapter;
use std::sync::Arc;

/// Engine-wide unique id of a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

pub struct Sequence {
    pub id: SeqId,
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    pub computed: usize,
    pub adapters: Vec<(Arc<LoraAdapter>, f32)>,
    pub params: SamplingParams,
    pub sampler: Sampler,
    pub detok: Detokenizer,
    pub blocks: BlockTable,
}

impl Sequence {
    pub fn new(id: SeqId, req: GenerateRequest, blocks: BlockTable) -> Self {
        let prompt_len = req.prompt_ids.len();
        Sequence {
            id,
            tokens: req.prompt_ids,
            prompt_len,
            computed: 0,
            adapters: req.adapters,
            sampler: Sampler::new(req.params.seed),
            params: req.params,
            detok: Detokenizer::default(),
            blocks,
        }
    }

    /// Tokens still to run through the model before the next sample.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.computed
    }

    /// Sort key grouping sequences with the same adapter mix next to each other.
    pub fn adapter_key(&self) -> Vec<usize> {
        self.adapters
            .iter()
            .map(|(a, _)| Arc::as_ptr(a) as usize)
            .collect()
    }

    /// Drops the KV blocks; the sequence will be recomputed from scratch.
    pub fn preempt(&mut self) {
        self.blocks.release();
        self.computed = 0;
    }
}
