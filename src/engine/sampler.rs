//! Picks the next token from one sequence's logits: penalties, then greedy (argmax) or temperature
//! sampling filtered by top-k, top-p and min-p, with the sequence's own seeded RNG (so a seeded
//! request is reproducible whatever else shares its batch). Logprobs are of the raw logits.
//! Every path is O(vocab) or close: only the candidates a filter can keep are ever sorted
//! (partial selection, widened geometrically until top-p's mass is covered), never the vocabulary.

use super::request::{SamplingParams, TokenLogprob};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

pub struct Sampler {
    rng: StdRng,
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = logits
        .iter()
        .map(|&x| ((x - max) as f64).exp())
        .sum::<f64>()
        .ln() as f32
        + max;
    logits.iter().map(|&x| x - lse).collect()
}

/// The first index of the largest value (one pass).
fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(seed: Option<u64>) -> Self {
        Sampler {
            rng: seed.map_or_else(|| StdRng::from_rng(&mut rand::rng()), StdRng::seed_from_u64),
        }
    }

    /// `prompt` and `output` are the sequence's tokens so far (for penalties).
    pub fn sample(
        &mut self,
        logits: &[f32],
        p: &SamplingParams,
        prompt: &[u32],
        output: &[u32],
    ) -> (u32, Option<TokenLogprob>) {
        let mut x = logits.to_vec();
        if p.repetition_penalty != 1.0 {
            let mut seen: Vec<u32> = prompt.iter().chain(output).copied().collect();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                let v = &mut x[t as usize];
                *v = if *v > 0.0 {
                    *v / p.repetition_penalty
                } else {
                    *v * p.repetition_penalty
                };
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut counts: HashMap<u32, u32> = HashMap::new();
            for &t in output {
                *counts.entry(t).or_default() += 1;
            }
            for (t, c) in counts {
                x[t as usize] -= p.presence_penalty + p.frequency_penalty * c as f32;
            }
        }
        let token = if p.temperature <= 1e-5 {
            argmax(&x)
        } else {
            self.sample_random(&x, p)
        };
        let logprob = p.logprobs.map(|n| {
            let lp = log_softmax(logits);
            let mut idx: Vec<u32> = (0..lp.len() as u32).collect();
            let n = n.min(idx.len());
            if n > 0 {
                idx.select_nth_unstable_by(n - 1, |&a, &b| {
                    lp[b as usize].total_cmp(&lp[a as usize]).then(a.cmp(&b))
                });
            }
            let mut top: Vec<(u32, f32)> = idx[..n].iter().map(|&i| (i, lp[i as usize])).collect();
            top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            TokenLogprob {
                token,
                logprob: lp[token as usize],
                top,
            }
        });
        (token, logprob)
    }

    fn sample_random(&mut self, x: &[f32], p: &SamplingParams) -> u32 {
        let scaled: Vec<(u32, f32)> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u32, v / p.temperature))
            .collect();
        let max = scaled.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        if p.top_k == 0 && p.top_p >= 1.0 && p.min_p <= 0.0 {
            // No filter: one draw over the whole distribution, in one pass.
            let w: Vec<f32> = scaled.iter().map(|c| (c.1 - max).exp()).collect();
            let mut r = self.rng.random::<f32>() * w.iter().sum::<f32>();
            for (i, q) in w.iter().enumerate() {
                r -= q;
                if r <= 0.0 {
                    return i as u32;
                }
            }
            return argmax(x);
        }
        let (cand, z) = candidates(&scaled, max, p);
        let probs: Vec<f32> = cand.iter().map(|&(_, v)| (v - max).exp() / z).collect();
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, &q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = p.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
        }
        let total: f32 = probs[..keep].iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for i in 0..keep {
            r -= probs[i];
            if r <= 0.0 {
                return cand[i].0;
            }
        }
        cand[keep - 1].0
    }
}

/// The `n` largest `(token, scaled logit)` pairs, sorted (desc, ties by id), by partial selection.
fn top_n(scaled: &[(u32, f32)], n: usize) -> Vec<(u32, f32)> {
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut v = scaled.to_vec();
    if n < v.len() {
        v.select_nth_unstable_by(n - 1, order);
        v.truncate(n);
    }
    v.sort_by(order);
    v
}

/// The candidates the filters may keep, sorted by logit, and the mass their probabilities are
/// normalised by: with top-k, exactly the top k (renormalised among themselves, as vLLM does);
/// otherwise the head of the distribution, widened 64, 256, ... until it covers top-p's mass
/// (or, for min-p alone, until it reaches below min-p's floor).
fn candidates(scaled: &[(u32, f32)], max: f32, p: &SamplingParams) -> (Vec<(u32, f32)>, f32) {
    let mass = |c: &[(u32, f32)]| c.iter().map(|c| (c.1 - max).exp()).sum::<f32>();
    if p.top_k > 0 {
        let head = top_n(scaled, p.top_k.min(scaled.len()));
        let z = mass(&head);
        return (head, z);
    }
    let z = mass(scaled);
    let mut n = 64.min(scaled.len());
    loop {
        let head = top_n(scaled, n);
        let covered = if p.top_p < 1.0 {
            mass(&head) / z >= p.top_p
        } else {
            head.last().is_some_and(|c| (c.1 - max).exp() < p.min_p)
        };
        if covered || n == scaled.len() {
            return (head, z);
        }
        n = (n * 4).min(scaled.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_picks_argmax_and_logprobs_sum_to_one() {
        let logits = vec![0.1, 2.0, -1.0, 1.9];
        let p = SamplingParams {
            logprobs: Some(2),
            ..Default::default()
        };
        let (t, lp) = Sampler::new(None).sample(&logits, &p, &[], &[]);
        assert_eq!(t, 1);
        let lp = lp.unwrap();
        assert_eq!(lp.top.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3]);
        let total: f32 = log_softmax(&logits).iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_filters_hold() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let p = SamplingParams {
            seed: Some(7),
            top_k: 5,
            ..params()
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(p.seed);
            (0..64).map(|_| s.sample(&logits, &p, &[], &[]).0).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(p.seed);
            (0..64).map(|_| s.sample(&logits, &p, &[], &[]).0).collect()
        };
        assert_eq!(a, b);
        let mut order: Vec<u32> = (0..50).collect();
        order.sort_by(|&x, &y| logits[y as usize].total_cmp(&logits[x as usize]));
        assert!(a.iter().all(|t| order[..5].contains(t)), "top-k violated");
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert!(distinct.len() > 1, "temperature 1 should not be greedy");
        // min_p = 1 keeps only the max.
        let p = SamplingParams {
            min_p: 1.0,
            ..params()
        };
        assert!((0..20).all(|_| Sampler::new(None).sample(&logits, &p, &[], &[]).0 == order[0]));
        // A tiny top_p keeps only the max.
        let p = SamplingParams {
            top_p: 1e-6,
            ..params()
        };
        assert!((0..20).all(|_| Sampler::new(None).sample(&logits, &p, &[], &[]).0 == order[0]));
    }

    #[test]
    fn penalties_push_repeated_tokens_down() {
        let logits = vec![1.0, 0.9, 0.0];
        let p = SamplingParams {
            frequency_penalty: 0.5,
            ..Default::default()
        };
        assert_eq!(Sampler::new(None).sample(&logits, &p, &[], &[0]).0, 1);
        let p = SamplingParams {
            presence_penalty: 0.2,
            ..Default::default()
        };
        assert_eq!(Sampler::new(None).sample(&logits, &p, &[], &[0, 0]).0, 1);
        let p = SamplingParams {
            repetition_penalty: 1.2,
            ..Default::default()
        };
        assert_eq!(Sampler::new(None).sample(&logits, &p, &[0], &[]).0, 1);
    }

    #[test]
    fn partial_selection_keeps_what_a_full_sort_keeps() {
        use rand::Rng;
        let mut rng = StdRng::seed_from_u64(3);
        // A peaky 49,152-token distribution and a flat one (top-p must widen past 64 there).
        for spread in [8.0f32, 0.01] {
            let x: Vec<f32> = (0..49_152)
                .map(|_| rng.random_range(-spread..spread))
                .collect();
            for (top_k, top_p, min_p) in [
                (0, 0.9, 0.0),
                (40, 0.95, 0.0),
                (0, 1.0, 0.05),
                (0, 0.5, 0.1),
            ] {
                let p = SamplingParams {
                    temperature: 0.8,
                    top_k,
                    top_p,
                    min_p,
                    ..Default::default()
                };
                let scaled: Vec<(u32, f32)> = x
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (i as u32, v / 0.8))
                    .collect();
                let max = scaled.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
                let (cand, _) = candidates(&scaled, max, &p);
                let mut full = scaled.clone();
                full.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                assert_eq!(cand[..], full[..cand.len()], "head is the sorted prefix");
                // The head covers every token the filters keep.
                let z: f64 = full.iter().map(|c| ((c.1 - max) as f64).exp()).sum();
                let kz: f64 = full[..if top_k > 0 { top_k } else { full.len() }]
                    .iter()
                    .map(|c| ((c.1 - max) as f64).exp())
                    .sum();
                let z = if top_k > 0 { kz } else { z };
                let mut acc = 0.0;
                let mut need = 0;
                for c in &full {
                    let q = ((c.1 - max) as f64).exp() / z;
                    if (top_p < 1.0 && acc >= top_p as f64 - 1e-6)
                        || (top_p >= 1.0 && q < min_p as f64)
                        || (top_k > 0 && need == top_k)
                    {
                        break;
                    }
                    acc += q;
                    need += 1;
                }
                assert!(cand.len() >= need, "kept {} < needed {need}", cand.len());
            }
        }
    }
}
