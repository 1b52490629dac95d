//! One generation in flight. `tokens` is prompt + output; `computed` counts the leading tokens
//! whose K/V are in the cache (always <= tokens.len()). Preemption drops the block table and
//! resets `computed` to 0: the sequence is recomputed later with the same tokens and RNG state.
//! A sequence is ready once every adapter of its mix is on device; from then until it is dropped
//! its pager lease pins them, and `adapters` holds their slots in the adapter pool, in mix order.
//! `identity` names the weights its K/V are computed with (the adapter ids, fresh on every load or
//! reload, and mix weights): the prefix cache only shares blocks between equal identities. A
//! request with `n > 1` runs as one sequence until its prompt is computed, then `fork`s into `n`
//! choices sharing the prompt's blocks and pins; choice `j` samples with its own seed stream.

use super::constraint::Constraint;
use super::detokenizer::Detokenizer;
use super::request::{choice_seed, GenerateRequest, SamplingParams};
use super::sampler::Sampler;
use crate::error::Result;
use crate::kv_cache::{BlockTable, CacheIdentity};
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
    /// Shared by the choices of one request (pins held until the last one drops); unshared
    /// until ready.
    lease: Option<Arc<Lease>>,
    ready: bool,
    /// Which weights compute this sequence's K/V (the prefix cache's key root).
    pub identity: CacheIdentity,
    /// This sequence's choice index among the request's `n`.
    pub choice: usize,
    /// Choices still to fork off once the prompt is computed (`n - 1`, then 0).
    pub forks_left: usize,
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
        let identity = CacheIdentity::new(
            req.adapters
                .iter()
                .map(|(r, w)| {
                    let id = match r {
                        AdapterRef::Paged(s) => s.id,
                        AdapterRef::Fixed(a) => a.uid,
                    };
                    (u64::from(id.0) << 32) | u64::from(w.to_bits())
                })
                .collect(),
        );
        Sequence {
            id,
            tokens: req.prompt_ids,
            prompt_len,
            computed: 0,
            lease: (!paged.is_empty()).then(|| Arc::new(pager.lease(paged))),
            mix: req.adapters,
            adapters: Vec::new(),
            ready: false,
            identity,
            choice: 0,
            forks_left: req.params.n.saturating_sub(1),
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
            Some(l) => match Arc::get_mut(l).expect("unshared until ready").poll()? {
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

    /// Choices this sequence stands for: itself plus the forks still to come (`n` before the
    /// prompt is computed, 1 after). The sequence cap and the queue cap count these.
    pub fn choices(&self) -> usize {
        1 + self.forks_left
    }

    /// True when the next step samples a token for this sequence after running `tokens` more.
    pub fn samples_after(&self, tokens: usize) -> bool {
        self.computed + tokens == self.tokens.len()
    }

    /// Choice `choice` of this request: the same tokens, sharing every KV block and the pins,
    /// sampling with its own seed stream (`choice_seed`: every seeded choice is reproducible).
    pub fn fork(&self, choice: usize) -> Sequence {
        let seed = self.params.seed.map(|s| choice_seed(s, choice));
        Sequence {
            id: self.id,
            tokens: self.tokens.clone(),
            prompt_len: self.prompt_len,
            computed: self.computed,
            mix: self.mix.clone(),
            adapters: self.adapters.clone(),
            lease: self.lease.clone(),
            ready: self.ready,
            identity: self.identity.clone(),
            choice,
            forks_left: 0,
            skipped: 0,
            constraint: self.constraint.clone(),
            sampler: Sampler::new(seed),
            params: self.params.clone(),
            detok: Detokenizer::default(),
            blocks: self.blocks.fork(),
        }
    }

    /// Drops the KV blocks; the sequence will be recomputed from scratch (its pins stay).
    pub fn preempt(&mut self) {
        self.blocks.release();
        self.computed = 0;
    }
}
