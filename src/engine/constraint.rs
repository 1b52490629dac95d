//! One sequence's grammar state (an llguidance `Matcher`). What always holds: the mask for the
//! next token is computed from the tokens consumed so far only, so it can be computed while the
//! step's forward pass runs (`prepare`), and applying it touches that sequence's logits row only:
//! a batch mixes constrained and free rows, of any adapters. A masked row can only sample an
//! allowed token (forbidden logits become -inf before any penalty, filter or draw); once the
//! grammar is complete only end-of-sequence tokens are allowed.

use llguidance::toktrie::SimpleVob;
use llguidance::Matcher;
use std::time::{Duration, Instant};

pub struct Constraint {
    matcher: Matcher,
    /// The mask for the next token, computed ahead by `prepare`.
    mask: Option<SimpleVob>,
    /// Time spent computing masks (for the cost per token).
    pub mask_time: Duration,
}

impl Clone for Constraint {
    /// A fresh copy with its own parser state (for each prompt of a multi-prompt request).
    fn clone(&self) -> Self {
        Constraint {
            matcher: self.matcher.deep_clone(),
            mask: self.mask.clone(),
            mask_time: Duration::ZERO,
        }
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Constraint")
    }
}

impl Constraint {
    pub(super) fn new(matcher: Matcher) -> Self {
        Constraint {
            matcher,
            mask: None,
            mask_time: Duration::ZERO,
        }
    }

    /// Computes the next token's mask now (call it off the critical path). A grammar error
    /// leaves no mask: the sequence then ends (`is_done`).
    pub fn prepare(&mut self) {
        if self.mask.is_some() || self.matcher.is_stopped() {
            return;
        }
        let t = Instant::now();
        match self.matcher.compute_mask() {
            Ok(m) => self.mask = Some(m),
            Err(e) => tracing::warn!("grammar mask failed: {e}"),
        }
        self.mask_time += t.elapsed();
    }

    /// Sets every forbidden logit of `row` to -inf; returns false if nothing is allowed (the
    /// grammar failed or is complete with no end-of-sequence token to give).
    pub fn apply(&mut self, row: &mut [f32]) -> bool {
        self.prepare();
        match &self.mask {
            Some(m) if m.num_set() > 0 => {
                apply_mask(m, row);
                true
            }
            _ => false,
        }
    }

    /// Advances the grammar by the sampled token.
    pub fn consume(&mut self, token: u32) {
        self.mask = None;
        if let Err(e) = self.matcher.consume_token(token) {
            tracing::warn!("grammar rejected token {token}: {e}");
        }
    }

    /// True once the grammar is complete (an end-of-sequence token was consumed) or failed.
    pub fn is_done(&self) -> bool {
        self.matcher.is_stopped() || self.matcher.is_error()
    }
}

/// `row[i] = -inf` wherever `mask` disallows token `i` (tokens past the mask's length too).
pub fn apply_mask(mask: &SimpleVob, row: &mut [f32]) {
    let words = mask.as_slice();
    for (w, chunk) in row.chunks_mut(32).enumerate() {
        let bits = words.get(w).copied().unwrap_or(0);
        if bits == u32::MAX {
            continue;
        }
        for (b, v) in chunk.iter_mut().enumerate() {
            if bits & (1 << b) == 0 {
                *v = f32::NEG_INFINITY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::request::SamplingParams;
    use crate::engine::sampler::Sampler;
    use rand::{Rng, SeedableRng};

    /// A random mask over `n` tokens and logits where forbidden tokens are the likeliest.
    fn case(seed: u64, n: usize) -> (SimpleVob, Vec<f32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut m = SimpleVob::alloc(n);
        let mut logits = vec![0f32; n];
        for (i, l) in logits.iter_mut().enumerate() {
            let allowed = rng.random_bool(0.1);
            if allowed {
                m.allow_token(i as u32);
            }
            *l = if allowed {
                rng.random_range(-5.0..0.0)
            } else {
                rng.random_range(0.0..5.0)
            };
        }
        m.allow_token(3); // never empty
        (m, logits)
    }

    #[test]
    fn a_masked_row_never_samples_a_forbidden_token() {
        for (seed, n) in [(1, 37), (2, 49_152), (3, 1000), (4, 33)] {
            let (mask, logits) = case(seed, n);
            let mut row = logits.clone();
            apply_mask(&mask, &mut row);
            // Reference: the mask bit by bit.
            for (i, (&r, &l)) in row.iter().zip(&logits).enumerate() {
                let want = if mask.is_allowed(i as u32) {
                    l
                } else {
                    f32::NEG_INFINITY
                };
                assert_eq!(r.to_bits(), want.to_bits(), "token {i}");
            }
            let greedy = SamplingParams::default();
            let random = SamplingParams {
                temperature: 1.5,
                seed: Some(seed),
                ..Default::default()
            };
            let filtered = SamplingParams {
                top_p: 0.9,
                top_k: 50,
                ..random.clone()
            };
            for p in [greedy, random, filtered] {
                let mut s = Sampler::new(p.seed);
                for _ in 0..200 {
                    let (t, _) = s.sample(&row, &p, &[1, 2, 3], &[4, 5]);
                    assert!(mask.is_allowed(t), "sampled forbidden token {t} ({p:?})");
                }
            }
        }
    }
}
