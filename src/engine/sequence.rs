//! One generation in flight. `tokens` is prompt + output; `computed` counts the leading tokens
//! whose K/V are in the cache (always <= tokens.len()). Preemption drops the block table and
//! resets `computed` to 0: the sequence is recomputed later with the same tokens and RNG state.
//! A sequence is ready once every adapter of its mix is on device; from then until it is dropped
//! its pager lease pins them, and `adapters` holds their slots in the adapter pool, in mix order.

use super::constraint::Constraint;
use super::detokenizer::Detokenizer;
use super::request::{GenerateRequest, SamplingParams};
use super::sampler::Sampler;
use crate::error::Result;
use crate::kv_cache::BlockTable;
use crate::lora::{AdapterPager, AdapterRef, AdapterSlot, AdapterSpec, Lease};
use std::sync::Arc;

/// Engine-wide unique id of a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

pub struct Sequence {
    pub id: SeqId,
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    pub computed: usize,
    /// The adapters as requested.
    pub mix: Vec<(AdapterRef, f32)>,
    /// The pool slots of `mix` with their weights, filled once ready (empty before, and for the
    /// base model).
    pub adapters: Vec<(AdapterSlot, f32)>,
    lease: Option<Lease>,
    ready: bool,
    /// Steps this ready sequence was passed over for the distinct-adapter cap (aging).
    pub skipped: usize,
    pub params: SamplingParams,
    /// The grammar state of a structured output (taken out of `params`).
    pub constraint: Option<Constraint>,
    pub sampler: Sampler,
    pub detok: Detokenizer,
    pub blocks: BlockTable,
}

impl Sequence {
    /// Creates the sequence and claims its paged adapters (starting their page-in).
    pub fn new(
        id: SeqId,
        mut req: GenerateRequest,
        blocks: BlockTable,
        pager: &AdapterPager,
    ) -> Self {
        let constraint = req.params.constraint.take();
        let prompt_len = req.prompt_ids.len();
        // In-memory adapters go through the pager too: they need a slot of the pool.
        let paged: Vec<_> = req
            .adapters
            .iter()
            .map(|(r, _)| match r {
                AdapterRef::Paged(s) => s.clone(),
                AdapterRef::Fixed(a) => Arc::new(AdapterSpec::preloaded(a.clone())),
            })
            .collect();
        Sequence {
            id,
            tokens: req.prompt_ids,
            prompt_len,
            computed: 0,
            lease: (!paged.is_empty()).then(|| pager.lease(paged)),
            mix: req.adapters,
            adapters: Vec::new(),
            ready: false,
            skipped: 0,
            constraint,
            sampler: Sampler::new(req.params.seed),
            params: req.params,
            detok: Detokenizer::default(),
            blocks,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// True once every adapter is on device and pinned; fails if a page-in failed.
    pub fn poll_ready(&mut self) -> Result<bool> {
        if self.ready {
            return Ok(true);
        }
        let slots = match &mut self.lease {
            Some(l) => match l.poll()? {
                Some(p) => p.to_vec(),
                None => return Ok(false),
            },
            None => Vec::new(),
        };
        self.adapters = slots
            .into_iter()
            .zip(&self.mix)
            .map(|(slot, (_, w))| (slot, *w))
            .collect();
        self.ready = true;
        Ok(true)
    }

    /// Names of the requested adapters.
    pub fn adapter_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.mix.iter().map(|(a, _)| a.name())
    }

    /// Tokens still to run through the model before the next sample.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.computed
    }

    /// Sort key grouping sequences with the same adapter mix next to each other.
    pub fn adapter_key(&self) -> Vec<AdapterSlot> {
        self.adapters.iter().map(|(s, _)| *s).collect()
    }

    /// True when the next step samples a token for this sequence after running `tokens` more.
    pub fn samples_after(&self, tokens: usize) -> bool {
        self.computed + tokens == self.tokens.len()
    }

    /// Drops the KV blocks; the sequence will be recomputed from scratch (its pins stay).
    pub fn preempt(&mut self) {
        self.blocks.release();
        self.computed = 0;
    }
}
