//! Quantized projections of the same input together with their LoRA deltas in one parallel
//! region: each task of the products ([`qlinear_many_with`]) finishes its stretch of every output
//! row with the row's LoRA expand over those columns. A row's shrunk values (`x·Aᵀ`, rank values
//! per term) are computed once, by the first task that needs them, and shared with the later
//! ones; a task that finds them still being computed leaves its expand to after the region
//! (nothing waits). Before its products, each task prefetches the adapter bytes it will read.
//! Decode used to pay one region per product plus two per adapted projection, then serial expands
//! between regions.
//!
//! What always holds: every output element sees the operations of [`qlinear`](super::qlinear)
//! followed by [`sgmv_pairs`] in the same order (base, bias, then each term's `expand` in term
//! order over the same shrunk values), so the result is bit-identical to the separate calls, and
//! a row alone to the row batched.
//!
//! [`sgmv_pairs`]: crate::ops::cpu::sgmv_pairs

use super::qlinear_many::{qlinear_many_with, QProj, TaskHooks};
use crate::ops::cpu::LoraPair;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// One projection's LoRA: `(rows, terms)` segments over disjoint rows, as [`sgmv_pairs`] takes.
///
/// [`sgmv_pairs`]: crate::ops::cpu::sgmv_pairs
pub type LoraSegs<'a, T> = [(Range<usize>, &'a [T])];

/// `ys[p] = x[m, in] · W_pᵀ + b_p + Σ LoRA deltas of projection p` (`loras[p]` its segments).
pub fn qlinear_lora<T: LoraPair>(
    x: &[f32],
    m: usize,
    projs: &[QProj],
    loras: &[&LoraSegs<'_, T>],
) -> Vec<Vec<f32>> {
    assert_eq!(
        projs.len(),
        loras.len(),
        "qlinear_lora: one LoRA per projection"
    );
    let k = projs.first().map_or(0, |(w, _)| w.cols());
    // Each row's terms per projection: `plan[p * m + row]`.
    let mut plan: Vec<Option<&[T]>> = vec![None; projs.len() * m];
    for (rows_of, segs) in plan.chunks_mut(m.max(1)).zip(loras) {
        for (rows, terms) in segs.iter().filter(|s| !s.1.is_empty()) {
            for row in rows.clone() {
                assert!(rows_of[row].is_none(), "qlinear_lora: segments overlap");
                rows_of[row] = Some(*terms);
            }
        }
    }
    let hooks = Hooks {
        x,
        m,
        k,
        cells: plan.iter().map(|_| OnceLock::new()).collect(),
        claimed: plan.iter().map(|_| AtomicBool::new(false)).collect(),
        plan,
    };
    qlinear_many_with(x, m, projs, Some(&hooks))
}

/// The LoRA work of one [`qlinear_lora`] call, run by the products' tasks.
struct Hooks<'a, T> {
    x: &'a [f32],
    m: usize,
    k: usize,
    /// Each row's terms per projection: `plan[p * m + row]`.
    plan: Vec<Option<&'a [T]>>,
    /// Row `i`'s shrunk values (`x·Aᵀ`, terms laid end to end) for projection `p`'s expands,
    /// computed once, by the first task that needs them. Nothing waits: a task that finds them
    /// claimed but not ready defers its expand to after the region. (Side jobs that started the
    /// shrinks early cost ~7% of the projections' time in `lora_bench` even as no-ops: rayon's
    /// split around them unbalanced the few-µs regions.)
    cells: Vec<OnceLock<Vec<f32>>>,
    /// Whether a task has taken on computing `cells[at]`.
    claimed: Vec<AtomicBool>,
}

impl<T: LoraPair> TaskHooks for Hooks<'_, T> {
    /// Prefetches the task's stretch of `B` (and `A` while the row's shrink is missing): at
    /// decode the adapter's bytes come from memory in short runs that the hardware prefetcher
    /// does not follow, and the products give them time to arrive.
    fn start(&self, p: usize, j0: usize, len: usize) {
        for i in 0..self.m {
            if let Some(terms) = self.plan[p * self.m + i] {
                let shrink = !self.claimed[p * self.m + i].load(Ordering::Relaxed);
                terms.iter().for_each(|t| t.prefetch(j0, len, shrink));
            }
        }
    }

    fn finish(&self, p: usize, i: usize, j0: usize, y: &mut [f32]) -> bool {
        let at = p * self.m + i;
        let Some(terms) = self.plan[at] else {
            return true;
        };
        let run = |s: &[f32], y: &mut [f32]| {
            let mut s0 = 0;
            for t in terms {
                t.expand(&s[s0..s0 + t.rank()], j0, y);
                s0 += t.rank();
            }
        };
        let cell = &self.cells[at];
        if let Some(s) = cell.get() {
            run(s, y);
            return true;
        }
        if self.claimed[at].swap(true, Ordering::AcqRel) {
            // Another task is computing them: expand now if they have arrived, else later.
            return match cell.get() {
                Some(s) => {
                    run(s, y);
                    true
                }
                None => false,
            };
        }
        let xr = &self.x[i * self.k..(i + 1) * self.k];
        let mut s = vec![0f32; terms.iter().map(T::rank).sum()];
        let mut s0 = 0;
        for t in terms {
            t.shrink(xr, &mut s[s0..s0 + t.rank()]);
            s0 += t.rank();
        }
        run(&s, y);
        let _ = cell.set(s);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::WeightFormat;
    use super::super::qlinear::tests::{bits_eq, data, rng};
    use super::super::{qlinear, ActPrecision, QMatrix};
    use super::*;
    use crate::ops::cpu::{sgmv_pairs, HalfLora, HalfTerm, Int8Lora, Int8Term, LoraTerm};

    /// Fused == `qlinear` then `sgmv_pairs`, bit for bit: f32, bf16 and int8 terms, mixed ranks and
    /// two-term mixes, rows without an adapter, int8 and int16 activations, decode and prefill
    /// sizes, 1 and 3 threads; and a row alone equals the row batched.
    #[test]
    fn equals_the_separate_products_and_sgmv_bit_for_bit() {
        let (mut rng, seed) = rng();
        let k = 256;
        let fs = [
            (WeightFormat::Q4_1, ActPrecision::Int16),
            (WeightFormat::Q4_K, ActPrecision::Int8),
            (WeightFormat::Q8_0, ActPrecision::Int16),
        ];
        let ws: Vec<QMatrix> = fs
            .iter()
            .enumerate()
            .map(|(i, &(f, act))| {
                let n = 64 + 40 * i;
                QMatrix::quantize(&data(&mut rng, n * k), n, k, f)
                    .unwrap()
                    .with_act_precision(act)
            })
            .collect();
        let bias = data(&mut rng, ws[1].rows());
        let projs: Vec<QProj> = ws
            .iter()
            .enumerate()
            .map(|(i, w)| (w, (i == 1).then_some(bias.as_slice())))
            .collect();
        // Two adapters per projection (ranks 8 and 3), f32 and their bf16 and int8 copies.
        let pairs: Vec<Vec<(Vec<f32>, Vec<f32>, usize)>> = ws
            .iter()
            .map(|w| {
                [8usize, 3]
                    .iter()
                    .map(|&r| (data(&mut rng, r * k), data(&mut rng, w.rows() * r), r))
                    .collect()
            })
            .collect();
        let halves: Vec<Vec<HalfLora>> = pairs
            .iter()
            .map(|ps| {
                ps.iter()
                    .map(|(a, b, r)| HalfLora::from_f32(a, b, *r))
                    .collect()
            })
            .collect();
        let int8s: Vec<Vec<Int8Lora>> = pairs
            .iter()
            .map(|ps| {
                ps.iter()
                    .map(|(a, b, r)| Int8Lora::from_f32(a, b, *r))
                    .collect()
            })
            .collect();
        for m in [1usize, 5, 70] {
            let x = data(&mut rng, m * k);
            // Rows: [0, m/2) adapter 0; row m/2 none; the rest a 0.7/0.3 mix.
            let mid = m / 2;
            let f32_terms: Vec<[Vec<LoraTerm>; 2]> = pairs
                .iter()
                .map(|ps| {
                    let t = |i: usize, c: f32| LoraTerm {
                        a: &ps[i].0,
                        b: &ps[i].1,
                        rank: ps[i].2,
                        coeff: c,
                    };
                    [vec![t(0, 2.0)], vec![t(0, 0.7), t(1, 0.3)]]
                })
                .collect();
            let half_terms: Vec<[Vec<HalfTerm>; 2]> = halves
                .iter()
                .map(|hs| {
                    let t = |i: usize, c: f32| HalfTerm {
                        lora: &hs[i],
                        coeff: c,
                    };
                    [vec![t(0, 2.0)], vec![t(0, 0.7), t(1, 0.3)]]
                })
                .collect();
            let int8_terms: Vec<[Vec<Int8Term>; 2]> = int8s
                .iter()
                .map(|hs| {
                    let t = |i: usize, c: f32| Int8Term {
                        lora: &hs[i],
                        coeff: c,
                    };
                    [vec![t(0, 2.0)], vec![t(0, 0.7), t(1, 0.3)]]
                })
                .collect();
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    check(&x, m, &projs, &f32_terms, mid, seed);
                    check(&x, m, &projs, &half_terms, mid, seed);
                    check(&x, m, &projs, &int8_terms, mid, seed);
                });
            }
        }
    }

    fn check<T: LoraPair>(
        x: &[f32],
        m: usize,
        projs: &[QProj],
        terms: &[[Vec<T>; 2]],
        mid: usize,
        seed: u64,
    ) {
        let k = projs[0].0.cols();
        let segs: Vec<Vec<(Range<usize>, &[T])>> = terms
            .iter()
            .map(|ts| {
                let mut v = Vec::new();
                if mid > 0 {
                    v.push((0..mid, &ts[0][..]));
                }
                if mid + 1 < m {
                    v.push((mid + 1..m, &ts[1][..]));
                }
                v
            })
            .collect();
        let refs: Vec<&LoraSegs<T>> = segs.iter().map(|s| &s[..]).collect();
        let got = qlinear_lora(x, m, projs, &refs);
        for (p, (w, b)) in projs.iter().enumerate() {
            let n = w.rows();
            let mut want = vec![0f32; m * n];
            qlinear(x, m, w, *b, &mut want);
            sgmv_pairs(x, k, &segs[p], n, &mut want);
            assert!(bits_eq(&got[p], &want), "m={m} proj {p} (seed {seed})");
            // Each row alone: the same bits.
            for row in 0..m {
                let seg: Vec<(Range<usize>, &[T])> = segs[p]
                    .iter()
                    .filter(|(r, _)| r.contains(&row))
                    .map(|(_, t)| (0..1, *t))
                    .collect();
                let xr = &x[row * k..(row + 1) * k];
                let alone = qlinear_lora(xr, 1, &projs[p..p + 1], &[&seg[..]]);
                assert!(
                    bits_eq(&alone[0], &got[p][row * n..(row + 1) * n]),
                    "m={m} proj {p} row {row} alone (seed {seed})"
                );
            }
        }
    }

    /// A task that finds the row's shrink claimed by another task, not yet made, declines (and
    /// computes nothing); called again once it is there, it expands with those values.
    #[test]
    fn a_claimed_shrink_defers_the_expand_until_it_is_made() {
        let (k, n, rank) = (64, 24, 4);
        let f = |i: usize, s: usize| ((i * s % 89) as f32 - 44.0) / 50.0;
        let a: Vec<f32> = (0..rank * k).map(|i| f(i, 3)).collect();
        let b: Vec<f32> = (0..n * rank).map(|i| f(i, 7)).collect();
        let lora = Int8Lora::from_f32(&a, &b, rank);
        let terms = [Int8Term {
            lora: &lora,
            coeff: 0.5,
        }];
        let x: Vec<f32> = (0..k).map(|i| f(i, 11)).collect();
        let hooks = Hooks {
            x: &x,
            m: 1,
            k,
            plan: vec![Some(&terms[..])],
            cells: vec![OnceLock::new()],
            claimed: vec![AtomicBool::new(true)],
        };
        let mut y = vec![1f32; 8];
        assert!(!hooks.finish(0, 0, 8, &mut y));
        assert!(
            y.iter().all(|&v| v == 1.0),
            "a declined stretch is untouched"
        );
        let mut s = vec![0f32; rank];
        terms[0].shrink(&x, &mut s);
        hooks.cells[0].set(s.clone()).unwrap();
        assert!(hooks.finish(0, 0, 8, &mut y));
        let mut want = vec![1f32; 8];
        terms[0].expand(&s, 8, &mut want);
        assert!(bits_eq(&y, &want));
    }
}
