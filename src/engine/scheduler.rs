//! Continuous batching. Each step: running sequences first (each needs one decode token, or the
//! rest of its prefill), then waiting ones in FIFO order while the token budget, the sequence cap,
//! the distinct-adapter cap and free KV blocks allow. The queue head is never skipped, so no
//! request starves. When a running sequence cannot get a block, the most recently admitted running
//! sequence is preempted (blocks freed, recomputed later) — work is never dropped.

use super::sequence::Sequence;
use crate::config::EngineConfig;
use std::collections::{HashSet, VecDeque};

pub struct Scheduler {
    cfg: EngineConfig,
    pub waiting: VecDeque<Sequence>,
    /// In admission order (oldest first).
    pub running: Vec<Sequence>,
    pub preemptions: u64,
}

/// One scheduled sequence: index into `running` and how many of its pending tokens to run.
#[derive(Debug, Clone, Copy)]
pub struct Scheduled {
    pub idx: usize,
    pub tokens: usize,
}

fn adapter_set(s: &Sequence) -> impl Iterator<Item = usize> + '_ {
    s.adapters
        .iter()
        .map(|(a, _)| std::sync::Arc::as_ptr(a) as usize)
}

impl Scheduler {
    pub fn new(cfg: EngineConfig) -> Self {
        Scheduler {
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            preemptions: 0,
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
        let mut adapters: HashSet<usize> = HashSet::new();
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
        // 2. Waiting sequences in FIFO order; stop at the first that does not fit.
        while let Some(head) = self.waiting.front_mut() {
            if budget == 0 || self.running.len() >= self.cfg.max_num_seqs {
                break;
            }
            let new: Vec<usize> = adapter_set(head)
                .filter(|a| !adapters.contains(a))
                .collect();
            if adapters.len() + new.len() > self.cfg.max_adapters_per_step && !plan.is_empty() {
                break;
            }
            let n = head.pending().min(budget);
            // Only admit a partial (chunked) prefill when the whole prompt cannot fit a step.
            if n < head.pending() && !plan.is_empty() {
                break;
            }
            if !head.blocks.reserve(head.computed + n) {
                break;
            }
            adapters.extend(new);
            let seq = self.waiting.pop_front().expect("head exists");
            self.running.push(seq);
            plan.push(Scheduled {
                idx: self.running.len() - 1,
                tokens: n,
            });
            budget -= n;
        }
        plan
    }
}
