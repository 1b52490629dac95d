//! Continuous batching. Each step: running sequences first (each needs one decode token, or the
//! rest of its prefill), then waiting ones in FIFO order while the token budget, the sequence cap
//! and free KV blocks allow. Adapter-aware: a waiting sequence whose adapters are not on device is
//! skipped (its page-in runs in the background; the batch never waits for it), and one that would
//! push the step past the distinct-adapter cap is passed over in favour of sequences whose adapters
//! are already in the step, at most `AGING_STEPS` times: after that nothing behind it is admitted
//! until it fits, so no request starves. The first sequence that does not fit the token budget or
//! the KV pool stops admission. When a running sequence cannot get a block, the most recently
//! admitted running sequence is preempted (blocks freed, recomputed later) — work is never dropped.

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
    pub waiting: VecDeque<Sequence>,
    /// In admission order (oldest first).
    pub running: Vec<Sequence>,
    pub preemptions: u64,
    /// Waiting sequences whose adapters became ready since last taken.
    pub paged_in: Vec<SeqId>,
    /// Sequences removed because a page-in failed.
    pub failed: Vec<(SeqId, Error)>,
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

impl Scheduler {
    pub fn new(cfg: EngineConfig) -> Self {
        Scheduler {
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            preemptions: 0,
            paged_in: Vec::new(),
            failed: Vec::new(),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Plans the next step, moving admitted sequences from `waiting` to `running`.
    pub fn schedule(&mut self) -> Vec<Scheduled> {
        let mut budget = self.cfg.max_batch_tokens;
        let mut plan = Vec::new();
        let mut adapters: HashSet<AdapterSlot> = HashSet::new();
        // 1. Running sequences, oldest first; preempt from the newest end when blocks run out.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let n = self.running[i].pending().min(budget);
            let need = self.running[i].computed + n;
            if !self.running[i].blocks.reserve(need) {
                // Free blocks by preempting the newest running sequence (possibly this one).
                let mut victim = self.running.pop().expect("non-empty");
                victim.preempt();
                self.preemptions += 1;
                self.waiting.push_front(victim);
                continue; // retry index i (or stop if it was the victim)
            }
            adapters.extend(adapter_set(&self.running[i]));
            plan.push(Scheduled { idx: i, tokens: n });
            budget -= n;
            i += 1;
        }
        // 2. Waiting sequences, FIFO, adapter-aware.
        self.admit_waiting(&mut budget, &mut plan, &mut adapters);
        plan
    }

    /// Admits waiting sequences in FIFO order. Every one is polled (a page-in may have finished);
    /// one whose adapters are not on device yet is skipped, never waited for.
    fn admit_waiting(
        &mut self,
        budget: &mut usize,
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
            if full || *budget == 0 || self.running.len() >= self.cfg.max_num_seqs {
                full = true;
                i += 1;
                continue;
            }
            let new: Vec<AdapterSlot> = adapter_set(seq).filter(|a| !adapters.contains(a)).collect();
            if adapters.len() + new.len() > self.cfg.max_adapters_per_step && !plan.is_empty() {
                // Prefer sequences whose adapters are already in this step; one passed over for
                // too long stops admission behind it until the running adapters drain.
                seq.skipped += 1;
                full = seq.skipped > AGING_STEPS;
                i += 1;
                continue;
            }
            let n = seq.pending().min(*budget);
            // Only admit a partial (chunked) prefill when the whole prompt cannot fit a step.
            if (n < seq.pending() && !plan.is_empty()) || !seq.blocks.reserve(seq.computed + n) {
                full = true;
                i += 1;
                continue;
            }
            adapters.extend(new);
            let seq = self.waiting.remove(i).expect("index in range");
            self.running.push(seq);
            plan.push(Scheduled {
                idx: self.running.len() - 1,
                tokens: n,
            });
            *budget -= n;
        }
    }
}
