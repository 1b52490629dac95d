//! Continuous batching. Each step: running sequences first (each needs one decode token, or the
//! rest of its prefill), then waiting ones in FIFO order while the token budget, the sequence cap
//! and free KV blocks allow. The sequence cap (`max_num_seqs`) counts choices: a request with `n`
//! choices is admitted only when all `n` fit beside the running ones (its forks never exceed the
//! cap), and one whose `n` alone exceeds it is refused before it is queued (`LlmEngine::add_request`). Adapter-aware: a waiting sequence whose adapters are not on device is
//! skipped (its page-in runs in the background; the batch never waits for it), and one that would
//! push the step past the distinct-adapter cap is passed over in favour of sequences whose adapters
//! are already in the step, at most `AGING_STEPS` times: after that nothing behind it is admitted
//! until it fits, so no request starves. The first sequence that does not fit the token budget or
//! the KV pool stops admission. When a running sequence cannot get a block, the most recently
//! admitted running sequence is preempted (blocks freed, recomputed later) — work is never dropped.
//!
//! Step cost is bounded while anything decodes: a step's cost is counted in token-equivalents (one
//! token through every projection = 1; attention over `c` cached positions = `c / K`, `K` taken
//! from the model's shapes, `ModelConfig::attention_positions_per_token`), and a step that carries
//! decode rows never costs more than `max_step_cost`. Prefill chunks shrink to fit, down to one
//! token, so a long prompt makes progress every step without stalling the decoding streams: their
//! inter-token latency stays at about the time of `max_step_cost` token-equivalents. Steps with no
//! decode rows are bounded by `max_batch_tokens` only.
//!
//! Prefix cache: a sequence with nothing computed takes the cached blocks of its longest cached
//! prefix under its own identity when it is considered for admission (`computed` starts past
//! them; its cost is counted from there) and gives them back if it is not admitted, so a waiting
//! sequence holds no block. A running sequence writing into a block it shares (a forked choice)
//! gets its own copy first (`BlockTable::reserve_write`).

use super::sequence::{SeqId, Sequence};
use crate::config::EngineConfig;
use crate::error::Error;
use crate::lora::AdapterSlot;
use std::collections::{HashSet, VecDeque};

/// Steps a ready sequence may be passed over for the distinct-adapter cap before it blocks
/// admission behind it.
pub const AGING_STEPS: usize = 8;

pub struct Scheduler {
    cfg: EngineConfig,
    /// Cached positions of attention that cost as much as one token's projections (`K`).
    attn_k: f64,
    pub waiting: VecDeque<Sequence>,
    /// In admission order (oldest first).
    pub running: Vec<Sequence>,
    pub preemptions: u64,
    /// Waiting sequences whose adapters became ready since last taken.
    pub paged_in: Vec<SeqId>,
    /// Sequences removed because a page-in failed.
    pub failed: Vec<(SeqId, Error)>,
    /// Prefix-cache lookups of admitted sequences, in tokens: asked for / found cached.
    pub prefix_queries: u64,
    pub prefix_hits: u64,
}

/// One scheduled sequence: index into `running` and how many of its pending tokens to run.
#[derive(Debug, Clone, Copy)]
pub struct Scheduled {
    pub idx: usize,
    pub tokens: usize,
}

fn adapter_set(s: &Sequence) -> impl Iterator<Item = AdapterSlot> + '_ {
    s.adapters.iter().map(|(a, _)| *a)
}

/// Cost of running `n` rows of a sequence whose first new row is at position `c`.
fn chunk_cost(n: usize, c: usize, k: f64) -> f64 {
    n as f64 + n as f64 * (c as f64 + (n as f64 + 1.0) / 2.0) / k
}

/// The most rows (at least 1) of a sequence at position `c` that fit in `left` token-equivalents.
fn rows_within(left: f64, c: usize, k: f64) -> usize {
    // n²/(2k) + n·(1 + (c + 1/2)/k) - left <= 0
    let b = 1.0 + (c as f64 + 0.5) / k;
    let n = ((b * b + 2.0 * left / k).sqrt() - b) * k;
    (n.max(0.0).floor() as usize).max(1)
}

impl Scheduler {
    /// `attn_k`: see `ModelConfig::attention_positions_per_token`.
    pub fn new(cfg: EngineConfig, attn_k: usize) -> Self {
        Scheduler {
            cfg,
            attn_k: attn_k.max(1) as f64,
            waiting: VecDeque::new(),
            running: Vec::new(),
            preemptions: 0,
            paged_in: Vec::new(),
            failed: Vec::new(),
            prefix_queries: 0,
            prefix_hits: 0,
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Choices of the running sequences (a request not yet forked counts all of its `n`).
    pub fn running_choices(&self) -> usize {
        self.running.iter().map(Sequence::choices).sum()
    }

    /// Choices of the waiting sequences.
    pub fn waiting_choices(&self) -> usize {
        self.waiting.iter().map(Sequence::choices).sum()
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Plans the next step, moving admitted sequences from `waiting` to `running`.
    pub fn schedule(&mut self) -> Vec<Scheduled> {
        let mut budget = Budget {
            tokens: self.cfg.max_batch_tokens,
            cost: 0.0,
            decoding: self.running.iter().any(|s| s.pending() == 1),
        };
        let mut plan = Vec::new();
        let mut adapters: HashSet<AdapterSlot> = HashSet::new();
        // 1. Running sequences: decode rows first (oldest first), then prefill chunks, which
        //    shrink to the step's cost bound; preempt from the newest end when blocks run out.
        for decode_pass in [true, false] {
            let mut i = 0;
            while i < self.running.len() && budget.tokens > 0 {
                let seq = &self.running[i];
                let is_decode = seq.pending() == 1;
                if is_decode != decode_pass || plan.iter().any(|p: &Scheduled| p.idx == i) {
                    i += 1;
                    continue;
                }
                let n = budget.rows_for(
                    seq.pending(),
                    seq.computed,
                    self.cfg.max_step_cost,
                    self.attn_k,
                );
                if n == 0 {
                    break;
                }
                let from = self.running[i].computed;
                if !self.running[i].blocks.reserve_write(from, from + n) {
                    // Free blocks by preempting the newest running sequence (possibly this one).
                    let victim_idx = self.running.len() - 1;
                    let mut victim = self.running.pop().expect("non-empty");
                    plan.retain(|p| p.idx != victim_idx);
                    victim.preempt();
                    self.preemptions += 1;
                    self.waiting.push_front(victim);
                    continue; // retry index i (or stop if it was the victim)
                }
                adapters.extend(adapter_set(&self.running[i]));
                budget.take(n, self.running[i].computed, self.attn_k);
                plan.push(Scheduled { idx: i, tokens: n });
                i += 1;
            }
        }
        // 2. Waiting sequences, FIFO, adapter-aware.
        self.admit_waiting(&mut budget, &mut plan, &mut adapters);
        plan
    }

    /// Admits waiting sequences in FIFO order. Every one is polled (a page-in may have finished);
    /// one whose adapters are not on device yet is skipped, never waited for.
    fn admit_waiting(
        &mut self,
        budget: &mut Budget,
        plan: &mut Vec<Scheduled>,
        adapters: &mut HashSet<AdapterSlot>,
    ) {
        let mut i = 0;
        let mut full = false;
        while i < self.waiting.len() {
            let seq = &mut self.waiting[i];
            let was_ready = seq.is_ready();
            match seq.poll_ready() {
                Err(e) => {
                    let seq = self.waiting.remove(i).expect("index in range");
                    self.failed.push((seq.id, e));
                    continue;
                }
                Ok(false) => {
                    i += 1;
                    continue;
                }
                Ok(true) if !was_ready => self.paged_in.push(seq.id),
                Ok(true) => {}
            }
            let seats = self.running.iter().map(Sequence::choices).sum::<usize>() + seq.choices();
            if full || budget.tokens == 0 || seats > self.cfg.max_num_seqs {
                full = true;
                i += 1;
                continue;
            }
            let new: Vec<AdapterSlot> =
                adapter_set(seq).filter(|a| !adapters.contains(a)).collect();
            if adapters.len() + new.len() > self.cfg.max_adapters_per_step && !plan.is_empty() {
                // Prefer sequences whose adapters are already in this step; one passed over for
                // too long stops admission behind it until the running adapters drain.
                seq.skipped += 1;
                full = seq.skipped > AGING_STEPS;
                i += 1;
                continue;
            }
            let lookup = self.cfg.enable_prefix_caching && seq.computed == 0;
            if lookup {
                seq.computed = seq.blocks.match_prefix(&seq.identity, &seq.tokens);
            }
            let n = budget.rows_for(
                seq.pending(),
                seq.computed,
                self.cfg.max_step_cost,
                self.attn_k,
            );
            // A partial (chunked) prefill is admitted only when the whole prompt cannot fit a
            // step; then nothing behind it is admitted this step (FIFO).
            let chunked = n < seq.pending();
            if n == 0
                || (chunked && plan.iter().any(|p: &Scheduled| p.tokens > 1))
                || !seq.blocks.reserve(seq.computed + n)
            {
                seq.preempt(); // holds no block while waiting
                full = true;
                i += 1;
                continue;
            }
            full = chunked;
            let computed = seq.computed;
            if lookup {
                self.prefix_queries += seq.tokens.len() as u64;
                self.prefix_hits += computed as u64;
            }
            adapters.extend(new);
            let seq = self.waiting.remove(i).expect("index in range");
            self.running.push(seq);
            plan.push(Scheduled {
                idx: self.running.len() - 1,
                tokens: n,
            });
            budget.take(n, computed, self.attn_k);
        }
    }
}

/// What is left of one step: tokens (`max_batch_tokens`) and, when decode rows are in the step,
/// cost (`max_step_cost` token-equivalents).
struct Budget {
    tokens: usize,
    cost: f64,
    decoding: bool,
}

impl Budget {
    /// Rows of a sequence (`pending` tokens, first at position `c`) that fit now; 0 if none.
    fn rows_for(&self, pending: usize, c: usize, max_cost: usize, k: f64) -> usize {
        let n = pending.min(self.tokens);
        if !self.decoding || n == 0 {
            return n;
        }
        let left = max_cost as f64 - self.cost;
        if left < chunk_cost(1, c, k) && self.cost > 0.0 && pending > 1 {
            return 0; // a prefill chunk would exceed the bound; decode rows always go
        }
        match pending {
            1 => n,
            _ => n.min(rows_within(left, c, k)),
        }
    }

    fn take(&mut self, n: usize, c: usize, k: f64) {
        self.tokens -= n;
        self.cost += chunk_cost(n, c, k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_within_is_the_largest_chunk_under_the_bound() {
        let k = 3000.0;
        for c in [0, 100, 2000, 8000] {
            for left in [1.0, 10.0, 128.0, 512.0] {
                let n = rows_within(left, c, k);
                if n > 1 {
                    assert!(
                        chunk_cost(n, c, k) <= left + 1e-9,
                        "c={c} left={left} n={n}"
                    );
                }
                assert!(
                    chunk_cost(n + 1, c, k) > left,
                    "c={c} left={left} n={n} not maximal"
                );
            }
        }
    }
}
