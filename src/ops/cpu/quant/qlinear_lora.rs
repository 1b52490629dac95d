//! Quantized projections of the same input together with their LoRA deltas in one parallel
//! region: each task of the products ([`qlinear_many_with`]) finishes its stretch of every output
//! row with the row's LoRA expand over those columns. A row's shrunk values (`x·Aᵀ`, rank values
//! per term) are computed by the first task that needs them and shared with the later ones
//! (tasks that start at the same moment may each compute them: the same bits). Decode used to pay
//! one region per product plus two per adapted projection, then serial expands between regions.
//!
//! What always holds: every output element sees the operations of [`qlinear`](super::qlinear)
//! followed by [`sgmv_pairs`] in the same order (base, bias, then each term's `expand` in term
//! order over the same shrunk values), so the result is bit-identical to the separate calls, and
//! a row alone to the row batched.
//!
//! [`sgmv_pairs`]: crate::ops::cpu::sgmv_pairs

use super::qlinear_many::{qlinear_many_with, QProj};
use crate::ops::cpu::LoraPair;
use std::ops::Range;
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
    let cells: Vec<OnceLock<Vec<f32>>> = plan.iter().map(|_| OnceLock::new()).collect();
    // Row `i`'s shrunk values (`x·Aᵀ`, terms laid end to end) for projection `p`'s expands,
    // computed by the first task that needs them. Nothing waits: a task that finds them missing
    // computes them itself (the same bits) and offers its copy. (Side jobs that started the
    // shrinks early cost ~7% of the projections' time in `lora_bench` even as no-ops: rayon's
    // split around them unbalanced the few-µs regions.)
    let expand = |p: usize, i: usize, j0: usize, y: &mut [f32]| {
        let Some(terms) = plan[p * m + i] else { return };
        let run = |s: &[f32], y: &mut [f32]| {
            let mut s0 = 0;
            for t in terms {
                t.expand(&s[s0..s0 + t.rank()], j0, y);
                s0 += t.rank();
            }
        };
        let cell = &cells[p * m + i];
        match cell.get() {
            Some(s) => run(s, y),
            None => {
                let xr = &x[i * k..(i + 1) * k];
                let mut s = vec![0f32; terms.iter().map(T::rank).sum()];
                let mut s0 = 0;
                for t in terms {
                    t.shrink(xr, &mut s[s0..s0 + t.rank()]);
                    s0 += t.rank();
                }
                run(&s, y);
                let _ = cell.set(s);
            }
        }
    };
    qlinear_many_with(x, m, projs, Some(expand))
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
}
