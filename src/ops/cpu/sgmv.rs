//! SGMV: segmented gather matrix-vector LoRA (the CPU twin of `kernels/sgmv.cu` and, with
//! one-row segments, of `kernels/bgmv.cu`). Rows of the batch are grouped in segments that share
//! one adapter combination; for each term the delta is `y[rows] += coeff · (x[rows]·Aᵀ)·Bᵀ`
//! (shrink to rank r, then expand). Ranks may differ between segments; terms are applied in order.

use std::ops::Range;

/// One adapter's LoRA pair for one projection. `a` is `[rank, in]`, `b` is `[out, rank]`.
#[derive(Clone, Copy)]
pub struct LoraTerm<'a> {
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub rank: usize,
    /// `scale * weight`: PEFT's alpha/r (or alpha/sqrt(r)) times the request's mixing weight.
    pub coeff: f32,
}

/// Contiguous batch rows sharing the same LoRA terms.
pub struct LoraSegment<'a> {
    pub rows: Range<usize>,
    pub terms: Vec<LoraTerm<'a>>,
}

/// Adds every segment's LoRA delta to `y` (`[rows, out]`), reading `x` (`[rows, in]`).
pub fn sgmv(x: &[f32], in_dim: usize, segments: &[LoraSegment], out_dim: usize, y: &mut [f32]) {
    let mut shrunk = Vec::new();
    for seg in segments {
        let n = seg.rows.len();
        let xs = &x[seg.rows.start * in_dim..seg.rows.end * in_dim];
        for t in &seg.terms {
            debug_assert_eq!(t.a.len(), t.rank * in_dim);
            debug_assert_eq!(t.b.len(), out_dim * t.rank);
            // Shrink: [n, in] · Aᵀ -> [n, r]. Expand: [n, r] · Bᵀ -> [n, out], scaled and added.
            shrunk.resize(n * t.rank, 0.0);
            for (i, s) in shrunk.chunks_mut(t.rank).enumerate() {
                let xr = &xs[i * in_dim..(i + 1) * in_dim];
                for (r, v) in s.iter_mut().enumerate() {
                    *v = super::dot(xr, &t.a[r * in_dim..(r + 1) * in_dim]);
                }
            }
            for i in 0..n {
                let yr = &mut y[(seg.rows.start + i) * out_dim..(seg.rows.start + i + 1) * out_dim];
                let s = &shrunk[i * t.rank..(i + 1) * t.rank];
                for (j, o) in yr.iter_mut().enumerate() {
                    *o += t.coeff * super::dot(s, &t.b[j * t.rank..(j + 1) * t.rank]);
                }
            }
        }
    }
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
}
