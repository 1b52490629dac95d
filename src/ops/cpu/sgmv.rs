//! SGMV: segmented gather matrix-vector LoRA (the CPU twin of `kernels/sgmv.cu` and, with
//! one-row segments, of `kernels/bgmv.cu`). Rows of the batch are grouped in segments that share
//! one adapter combination; for each term the delta is `y[rows] += coeff · (x[rows]·Aᵀ)·Bᵀ`
//! (shrink to rank r, then expand). Ranks may differ between segments; terms are applied in order.
//! A term's storage is any [`LoraPair`]: f32 as loaded ([`LoraTerm`], the exact path) or bf16
//! ([`super::HalfTerm`], what the quantized path reads); the schedule is the same for both.

use rayon::prelude::*;
use std::ops::Range;

/// One adapter's LoRA pair for one projection, in some storage format.
pub trait LoraPair: Sync {
    fn rank(&self) -> usize;
    /// `out[r] = dot(x, A[r])` for every rank row (`out.len() == rank`).
    fn shrink(&self, x: &[f32], out: &mut [f32]);
    /// `y[j] += coeff · dot(s, B[j0 + j])` for the columns of `y`, `s` being the shrunk row.
    fn expand(&self, s: &[f32], j0: usize, y: &mut [f32]);
    /// Asks the caches for what `expand` over columns `j0..j0 + len` reads (and, with `shrink`,
    /// what `shrink` reads), to overlap its fetch with other work. Changes no value; by default
    /// nothing.
    fn prefetch(&self, _j0: usize, _len: usize, _shrink: bool) {}
}

/// One adapter's LoRA pair for one projection. `a` is `[rank, in]`, `b` is `[out, rank]`.
#[derive(Clone, Copy)]
pub struct LoraTerm<'a> {
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub rank: usize,
    /// `scale * weight`: PEFT's alpha/r (or alpha/sqrt(r)) times the request's mixing weight.
    pub coeff: f32,
}

impl LoraPair for LoraTerm<'_> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn shrink(&self, x: &[f32], out: &mut [f32]) {
        debug_assert_eq!(self.a.len(), self.rank * x.len());
        for (o, ar) in out.iter_mut().zip(self.a.chunks_exact(x.len())) {
            *o = super::dot(x, ar);
        }
    }

    fn expand(&self, s: &[f32], j0: usize, y: &mut [f32]) {
        for (j, o) in (j0..).zip(y.iter_mut()) {
            *o += self.coeff * super::dot(s, &self.b[j * self.rank..(j + 1) * self.rank]);
        }
    }
}

/// Contiguous batch rows sharing the same LoRA terms.
pub struct LoraSegment<'a> {
    pub rows: Range<usize>,
    pub terms: Vec<LoraTerm<'a>>,
}

/// Adds every segment's LoRA delta to `y` (`[rows, out]`), reading `x` (`[rows, in]`).
///
/// Rows run in parallel; with fewer rows than the pool has threads (decode), each row's expand
/// is also split over output columns. Every element sees the same operations in the same order
/// (terms in order, each `y += coeff · dot(shrunk, b_j)`), so the split never changes a bit.
pub fn sgmv(x: &[f32], in_dim: usize, segments: &[LoraSegment], out_dim: usize, y: &mut [f32]) {
    let segs: Vec<_> = segments
        .iter()
        .map(|s| (s.rows.clone(), &s.terms[..]))
        .collect();
    sgmv_pairs(x, in_dim, &segs, out_dim, y)
}

/// [`sgmv`] over any term storage: `segments` are `(rows, terms)`.
pub fn sgmv_pairs<T: LoraPair>(
    x: &[f32],
    in_dim: usize,
    segments: &[(Range<usize>, &[T])],
    out_dim: usize,
    y: &mut [f32],
) {
    let threads = rayon::current_num_threads();
    let total: usize = segments.iter().map(|s| s.0.len()).sum();
    // Output columns per task when a row is split (whole rows once rows alone fill the pool).
    let cols = match total >= 2 * threads {
        true => out_dim,
        false => out_dim.div_ceil(4 * threads / total.max(1)).max(64),
    };
    let mut ys: Vec<Option<&mut [f32]>> = y.chunks_mut(out_dim).map(Some).collect();
    let mut tasks = Vec::with_capacity(total);
    for (rows, terms) in segments.iter().filter(|s| !s.1.is_empty()) {
        for row in rows.clone() {
            let yr = ys[row].take().expect("segments cover disjoint rows");
            tasks.push((&x[row * in_dim..(row + 1) * in_dim], *terms, yr));
        }
    }
    tasks.into_par_iter().for_each(|(xr, terms, yr)| {
        // Shrink: x·Aᵀ -> r values per term, laid end to end.
        let mut shrunk = vec![0f32; terms.iter().map(T::rank).sum()];
        let mut s0 = 0;
        for t in terms {
            t.shrink(xr, &mut shrunk[s0..s0 + t.rank()]);
            s0 += t.rank();
        }
        // Expand: y_j += coeff · (shrunk · b_j), term after term.
        let expand = |(c, out): (usize, &mut [f32])| {
            let mut s0 = 0;
            for t in terms {
                t.expand(&shrunk[s0..s0 + t.rank()], c * cols, out);
                s0 += t.rank();
            }
        };
        match cols < out_dim {
            true => yr.par_chunks_mut(cols).enumerate().for_each(expand),
            false => expand((0, yr)),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgmv_matches_dense_reference_per_segment() {
        let (rows, din, dout) = (6, 10, 7);
        let f = |i: usize, s: usize| ((i * s % 89) as f32 - 44.0) / 50.0;
        let x: Vec<f32> = (0..rows * din).map(|i| f(i, 13)).collect();
        let (a4, b4): (Vec<f32>, Vec<f32>) = (
            (0..4 * din).map(|i| f(i, 7)).collect(),
            (0..dout * 4).map(|i| f(i, 11)).collect(),
        );
        let (a2, b2): (Vec<f32>, Vec<f32>) = (
            (0..2 * din).map(|i| f(i, 19)).collect(),
            (0..dout * 2).map(|i| f(i, 29)).collect(),
        );
        let t4 = LoraTerm {
            a: &a4,
            b: &b4,
            rank: 4,
            coeff: 0.5,
        };
        let t2 = LoraTerm {
            a: &a2,
            b: &b2,
            rank: 2,
            coeff: 2.0,
        };
        let segs = vec![
            LoraSegment {
                rows: 0..2,
                terms: vec![t4],
            },
            LoraSegment {
                rows: 3..6,
                terms: vec![t2, t4],
            },
        ];
        let mut y = vec![1f32; rows * dout];
        sgmv(&x, din, &segs, dout, &mut y);
        let delta = |i: usize, t: &LoraTerm, j: usize| -> f64 {
            (0..t.rank)
                .map(|r| {
                    (0..din)
                        .map(|c| x[i * din + c] as f64 * t.a[r * din + c] as f64)
                        .sum::<f64>()
                        * t.b[j * t.rank + r] as f64
                })
                .sum::<f64>()
                * t.coeff as f64
        };
        for i in 0..rows {
            for j in 0..dout {
                let want = 1.0
                    + match i {
                        0 | 1 => delta(i, &t4, j),
                        2 => 0.0,
                        _ => delta(i, &t2, j) + delta(i, &t4, j),
                    };
                assert!(
                    (y[i * dout + j] as f64 - want).abs() < 1e-5,
                    "row {i} col {j}"
                );
            }
        }
    }

    #[test]
    fn a_row_is_bit_identical_alone_batched_and_split_over_columns() {
        let (rows, din, dout, rank) = (9, 96, 300, 8);
        let f = |i: usize, s: usize| ((i * s % 97) as f32 - 48.0) / 61.0;
        let x: Vec<f32> = (0..rows * din).map(|i| f(i, 17)).collect();
        let (a, b): (Vec<f32>, Vec<f32>) = (
            (0..rank * din).map(|i| f(i, 5)).collect(),
            (0..dout * rank).map(|i| f(i, 23)).collect(),
        );
        let t = LoraTerm {
            a: &a,
            b: &b,
            rank,
            coeff: 0.75,
        };
        // `seg_rows` of a 9-row batch with two terms, on a pool of `threads`.
        let run = |threads: usize, seg_rows: std::ops::Range<usize>| {
            let seg = LoraSegment {
                rows: seg_rows,
                terms: vec![t, t],
            };
            let mut y: Vec<f32> = (0..rows * dout).map(|i| f(i, 3)).collect();
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| sgmv(&x, din, &[seg], dout, &mut y));
            y
        };
        // Every row at once on one thread (whole rows) vs each row alone on 4 threads (its
        // expand split over columns).
        let all = run(1, 0..rows);
        for r in 0..rows {
            let alone = run(4, r..r + 1);
            let (p, q) = (
                &all[r * dout..(r + 1) * dout],
                &alone[r * dout..(r + 1) * dout],
            );
            assert!(
                p.iter().zip(q).all(|(p, q)| p.to_bits() == q.to_bits()),
                "row {r}"
            );
        }
    }
}
