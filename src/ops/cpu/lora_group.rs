//! The LoRA deltas of projections that read the same input (q/k/v, gate/up) in one parallel
//! region per phase. With few rows (decode), [`sgmv_pairs`] shrinks each row on one thread and
//! forks once per projection; here every shrink of the group, split over rank rows, runs on the
//! pool, then every expand, split over output columns: two fork-joins per group, both cores busy.
//! Each shrunk value is one [`LoraPair::shrink`] dot and each output column sees its terms in
//! order, exactly as in [`sgmv_pairs`]: the bits equal projection-by-projection SGMV, alone or
//! batched, whatever the split.

use super::sgmv::{sgmv_pairs, LoraPair};
use rayon::prelude::*;
use std::ops::Range;

/// Rank rows per shrink task.
const SHRINK_ROWS: usize = 8;

/// One projection of a group: its segments `(rows, terms)` and its output `[rows, out_dim]`.
pub struct GroupProj<'s, 't, T> {
    pub segments: &'s [(Range<usize>, &'t [T])],
    pub out_dim: usize,
    pub y: &'s mut [f32],
}

/// One batch row of one projection with its terms: the shrink's input and the expand's output.
struct Unit<'a, T> {
    x: &'a [f32],
    terms: &'a [T],
    y: &'a mut [f32],
}

/// Adds every projection's LoRA delta to its `y`, all reading `x` (`[rows, in_dim]`).
pub fn sgmv_group<T: LoraPair>(x: &[f32], in_dim: usize, projs: &mut [GroupProj<'_, '_, T>]) {
    let threads = rayon::current_num_threads();
    let rows = |p: &GroupProj<T>| -> usize { p.segments.iter().map(|s| s.0.len()).sum() };
    if projs.iter().any(|p| rows(p) >= 2 * threads) {
        // Whole rows already fill the pool.
        for p in projs.iter_mut() {
            sgmv_pairs(x, in_dim, p.segments, p.out_dim, p.y);
        }
        return;
    }
    let mut units: Vec<Unit<T>> = Vec::new();
    for p in projs.iter_mut() {
        let mut ys: Vec<Option<&mut [f32]>> = p.y.chunks_mut(p.out_dim).map(Some).collect();
        for (seg_rows, terms) in p.segments.iter().filter(|s| !s.1.is_empty()) {
            for row in seg_rows.clone() {
                units.push(Unit {
                    x: &x[row * in_dim..(row + 1) * in_dim],
                    terms: *terms,
                    y: ys[row].take().expect("segments cover disjoint rows"),
                });
            }
        }
    }
    let shrunk = shrink_all(&units);
    // About four expand tasks per thread over the whole group, at least 64 columns each.
    let width: usize = units.iter().map(|u| u.y.len()).sum();
    let cols = width.div_ceil(4 * threads).max(64);
    let mut jobs = Vec::new();
    for (u, s) in units.iter_mut().zip(&shrunk) {
        for (c, out) in u.y.chunks_mut(cols).enumerate() {
            jobs.push((u.terms, &s[..], c * cols, out));
        }
    }
    jobs.into_par_iter().for_each(|(terms, s, j0, out)| {
        let mut s0 = 0;
        for t in terms {
            t.expand(&s[s0..s0 + t.rank()], j0, out);
            s0 += t.rank();
        }
    });
}

/// Every unit's shrunk row (its terms' ranks laid end to end), computed in tasks of
/// [`SHRINK_ROWS`] rank rows.
fn shrink_all<T: LoraPair>(units: &[Unit<T>]) -> Vec<Vec<f32>> {
    let mut shrunk: Vec<Vec<f32>> = units
        .iter()
        .map(|u| vec![0f32; u.terms.iter().map(T::rank).sum()])
        .collect();
    let mut jobs = Vec::new();
    for (u, s) in units.iter().zip(shrunk.iter_mut()) {
        let mut rest = &mut s[..];
        for t in u.terms {
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(t.rank());
            rest = tail;
            for (c, out) in mine.chunks_mut(SHRINK_ROWS).enumerate() {
                jobs.push((u.x, t, c * SHRINK_ROWS, out));
            }
        }
    }
    jobs.into_par_iter()
        .for_each(|(x, t, r0, out)| t.shrink(x, r0, out));
    shrunk
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cpu::{HalfLora, HalfTerm, LoraTerm};

    fn f(i: usize, s: usize) -> f32 {
        ((i * s % 97) as f32 - 48.0) / 61.0
    }

    /// A group of three projections (different widths, some rows without terms, two terms on
    /// some rows) gives the bits of one `sgmv_pairs` per projection, for f32 and bf16 pairs,
    /// on 1 and 4 threads and for each row alone.
    #[test]
    fn group_is_bit_identical_to_one_sgmv_per_projection() {
        let (rows, din, rank) = (5, 100, 16);
        let douts = [300, 72, 520];
        let x: Vec<f32> = (0..rows * din).map(|i| f(i, 17)).collect();
        let pairs: Vec<(Vec<f32>, Vec<f32>)> = douts
            .iter()
            .enumerate()
            .map(|(p, &d)| {
                let a = (0..rank * din).map(|i| f(i, 5 + p)).collect();
                let b = (0..d * rank).map(|i| f(i, 23 + p)).collect();
                (a, b)
            })
            .collect();
        let f32_terms: Vec<[LoraTerm; 2]> = pairs
            .iter()
            .map(|(a, b)| {
                let t = |coeff| LoraTerm { a, b, rank, coeff };
                [t(0.75), t(-1.5)]
            })
            .collect();
        let halves: Vec<HalfLora> = pairs
            .iter()
            .map(|(a, b)| HalfLora::from_f32(a, b, rank))
            .collect();
        let half_terms: Vec<[HalfTerm; 2]> = halves
            .iter()
            .map(|lora| [0.75, -1.5].map(|coeff| HalfTerm { lora, coeff }))
            .collect();
        check(&x, din, &douts, rows, &f32_terms);
        check(&x, din, &douts, rows, &half_terms);
    }

    fn check<T: LoraPair>(x: &[f32], din: usize, douts: &[usize], rows: usize, terms: &[[T; 2]]) {
        // Rows 0..2: first term; row 2: none; rows 3..5: both terms.
        let segs: Vec<Vec<(Range<usize>, &[T])>> = terms
            .iter()
            .map(|t| vec![(0..2, &t[..1]), (3..rows, &t[..])])
            .collect();
        let init = |d: usize| -> Vec<f32> { (0..rows * d).map(|i| f(i, 3)).collect() };
        let pool = |n: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let want: Vec<Vec<f32>> = douts
            .iter()
            .zip(&segs)
            .map(|(&d, s)| {
                let mut y = init(d);
                pool(1).install(|| sgmv_pairs(x, din, s, d, &mut y));
                y
            })
            .collect();
        let group = |threads: usize, keep: &dyn Fn(usize) -> bool| {
            let sub: Vec<Vec<(Range<usize>, &[T])>> = segs
                .iter()
                .map(|s| {
                    s.iter()
                        .flat_map(|(r, t)| {
                            r.clone()
                                .filter(move |&i| keep(i))
                                .map(move |i| (i..i + 1, *t))
                        })
                        .collect()
                })
                .collect();
            let mut ys: Vec<Vec<f32>> = douts.iter().map(|&d| init(d)).collect();
            let mut projs: Vec<GroupProj<T>> = ys
                .iter_mut()
                .zip(&sub)
                .zip(douts)
                .map(|((y, s), &out_dim)| GroupProj {
                    segments: s,
                    out_dim,
                    y,
                })
                .collect();
            pool(threads).install(|| sgmv_group(x, din, &mut projs));
            ys
        };
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
        for threads in [1, 4] {
            let all = group(threads, &|_| true);
            for (p, (g, w)) in all.iter().zip(&want).enumerate() {
                assert!(same(&g[..], &w[..]), "projection {p}, {threads} threads");
            }
        }
        for r in 0..rows {
            let alone = group(4, &|i| i == r);
            for (p, (g, w)) in alone.iter().zip(&want).enumerate() {
                let d = douts[p];
                assert!(
                    same(&g[r * d..(r + 1) * d], &w[r * d..(r + 1) * d]),
                    "row {r} alone, projection {p}"
                );
            }
        }
    }
}
