//! bf16 LoRA pairs: `A` kept `[rank, in]`, `B` transposed into panels of [`PANEL`] output
//! columns (`[out/PANEL][rank][PANEL]`), both bf16 — half the bytes of the f32 pair, which is what
//! a token reads on the quantized path. The shrink is a dot over `in` in 32 lanes; the expand
//! reads a stretch of columns as one contiguous run of panels, accumulating `Σ_r s_r·B[j, r]` in
//! rank order per column, then `y[j] += coeff · acc[j]`. Every output element's operations depend
//! only on its column, so splitting columns across tasks (or a row being alone or batched) never
//! changes a bit; the AVX2 kernels ([`super::half_lora_x86`]) do each lane's operations of the
//! scalar code here in the same order, so they are bit-identical to it.

use super::sgmv::LoraPair;
use half::bf16;

/// Output columns per panel of `B` (one 8-lane f32 vector).
pub const PANEL: usize = 8;

/// One projection's LoRA pair in bf16.
#[derive(Debug, Clone)]
pub struct HalfLora {
    /// `[rank, in]`, bf16 bits.
    pub a: Vec<u16>,
    /// `B` in panels: element `(j, r)` at `((j / PANEL) · rank + r) · PANEL + j % PANEL`; the last
    /// panel's columns past `out_dim` are zero.
    pub bp: Vec<u16>,
    pub rank: usize,
    pub out_dim: usize,
}

impl HalfLora {
    /// Rounds (to nearest even) an f32 pair `a: [rank, in]`, `b: [out, rank]`.
    pub fn from_f32(a: &[f32], b: &[f32], rank: usize) -> Self {
        let out_dim = b.len() / rank;
        let round = |v: f32| bf16::from_f32(v).to_bits();
        let mut bp = vec![0u16; out_dim.div_ceil(PANEL) * rank * PANEL];
        for (j, row) in b.chunks_exact(rank).enumerate() {
            for (r, &v) in row.iter().enumerate() {
                bp[panel_at(rank, j, r)] = round(v);
            }
        }
        HalfLora {
            a: a.iter().map(|&v| round(v)).collect(),
            bp,
            rank,
            out_dim,
        }
    }

    pub fn bytes(&self) -> usize {
        (self.a.len() + self.bp.len()) * 2
    }

    /// `B[j, r]` as bf16 bits.
    #[inline(always)]
    pub fn b_at(&self, j: usize, r: usize) -> u16 {
        self.bp[panel_at(self.rank, j, r)]
    }
}

/// Index of `B[j, r]` in the panel layout.
#[inline(always)]
fn panel_at(rank: usize, j: usize, r: usize) -> usize {
    ((j / PANEL) * rank + r) * PANEL + j % PANEL
}

#[inline(always)]
pub(crate) fn widen(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Lanes of [`dot_bf16`]: four independent 8-wide FMA chains (one would wait on its own latency).
pub(crate) const DOT_LANES: usize = 32;

/// `Σ x[i]·a[i]` in [`DOT_LANES`] lanes with a fixed (pairwise) reduction order: the reference
/// of the SIMD shrink.
#[cfg_attr(target_feature = "avx2", allow(dead_code))] // the SIMD shrink's test oracle there
pub(crate) fn dot_bf16(x: &[f32], a: &[u16]) -> f32 {
    let (xc, ac) = (x.chunks_exact(DOT_LANES), a.chunks_exact(DOT_LANES));
    let mut tail = 0f32;
    for (&xv, &av) in xc.remainder().iter().zip(ac.remainder()) {
        tail = xv.mul_add(widen(av), tail);
    }
    let mut acc = [0f32; DOT_LANES];
    for (xs, avs) in xc.zip(ac) {
        for i in 0..DOT_LANES {
            acc[i] = xs[i].mul_add(widen(avs[i]), acc[i]);
        }
    }
    let mut w = DOT_LANES;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    acc[0] + tail
}

/// The reference shrink: `out[r] = dot_bf16(x, A[r])`.
#[cfg_attr(target_feature = "avx2", allow(dead_code))]
pub(crate) fn shrink_scalar(h: &HalfLora, x: &[f32], out: &mut [f32]) {
    for (o, ar) in out.iter_mut().zip(h.a.chunks_exact(x.len())) {
        *o = dot_bf16(x, ar);
    }
}

/// The reference expand over columns `j0..j0 + y.len()`: per column `acc = Σ_r s_r·B[j, r]` (one
/// FMA per rank, in rank order, from 0), then `y[j] = coeff·acc + y[j]` (one FMA).
pub(crate) fn expand_scalar(h: &HalfLora, coeff: f32, s: &[f32], j0: usize, y: &mut [f32]) {
    for (j, o) in (j0..).zip(y.iter_mut()) {
        let mut acc = 0f32;
        for (r, &sr) in s.iter().enumerate() {
            acc = sr.mul_add(widen(h.b_at(j, r)), acc);
        }
        *o = coeff.mul_add(acc, *o);
    }
}

/// A [`HalfLora`] with its coefficient (`scale * weight`) for one batch segment.
#[derive(Clone, Copy)]
pub struct HalfTerm<'a> {
    pub lora: &'a HalfLora,
    pub coeff: f32,
}

impl LoraPair for HalfTerm<'_> {
    fn rank(&self) -> usize {
        self.lora.rank
    }

    fn shrink(&self, x: &[f32], out: &mut [f32]) {
        debug_assert_eq!(self.lora.a.len(), self.lora.rank * x.len());
        debug_assert_eq!(out.len(), self.lora.rank);
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ))]
        // SAFETY: AVX2 + FMA are compile-time features of this build; `A` is `[rank, x.len()]`
        // and `out` has `rank` elements (asserted inside).
        unsafe {
            super::half_lora_x86::shrink(self.lora, x, out)
        }
        #[cfg(not(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        )))]
        shrink_scalar(self.lora, x, out)
    }

    fn expand(&self, s: &[f32], j0: usize, y: &mut [f32]) {
        debug_assert!(j0 + y.len() <= self.lora.out_dim);
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ))]
        // SAFETY: as in `shrink`; the columns `j0..j0 + y.len()` lie within `out_dim` (asserted
        // inside), so every panel read is inside `bp`.
        unsafe {
            super::half_lora_x86::expand(self.lora, self.coeff, s, j0, y)
        }
        #[cfg(not(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        )))]
        expand_scalar(self.lora, self.coeff, s, j0, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cpu::sgmv::{sgmv, sgmv_pairs, LoraSegment, LoraTerm};

    fn f(i: usize, s: usize) -> f32 {
        ((i * s % 97) as f32 - 48.0) / 61.0
    }

    /// The bf16 pair against the f32 pair on the same (bf16-representable) values: equal to f32
    /// rounding, and a row alone on 4 threads (columns split) bit-identical to the batch on 1.
    #[test]
    fn half_pair_matches_f32_pair_and_is_batch_invariant() {
        let (rows, din, dout, rank) = (9, 100, 300, 16);
        let x: Vec<f32> = (0..rows * din).map(|i| f(i, 17)).collect();
        // Values exactly representable in bf16, so the only difference is summation order.
        let snap = |v: f32| bf16::from_f32(v).to_f32();
        let a: Vec<f32> = (0..rank * din).map(|i| snap(f(i, 5))).collect();
        let b: Vec<f32> = (0..dout * rank).map(|i| snap(f(i, 23))).collect();
        let h = HalfLora::from_f32(&a, &b, rank);
        let half = [HalfTerm {
            lora: &h,
            coeff: 0.75,
        }];
        let run = |threads: usize, rows_: std::ops::Range<usize>| {
            let mut y: Vec<f32> = (0..rows * dout).map(|i| f(i, 3)).collect();
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| sgmv_pairs(&x, din, &[(rows_, &half[..])], dout, &mut y));
            y
        };
        let mut want: Vec<f32> = (0..rows * dout).map(|i| f(i, 3)).collect();
        let term = LoraTerm {
            a: &a,
            b: &b,
            rank,
            coeff: 0.75,
        };
        let seg = LoraSegment {
            rows: 0..rows,
            terms: vec![term],
        };
        sgmv(&x, din, &[seg], dout, &mut want);
        let all = run(1, 0..rows);
        for (i, (g, w)) in all.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "elem {i}: {g} vs {w}"
            );
        }
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

    #[test]
    fn rounding_is_to_nearest_and_transposes_b() {
        let a = [1.0f32, 1.00390625, -3.5];
        let b = [0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6]; // [out=3, rank=2]
        let h = HalfLora::from_f32(&a, &b, 2);
        assert_eq!(h.out_dim, 3);
        assert_eq!(widen(h.a[0]), 1.0);
        assert_eq!(widen(h.a[1]), 1.0); // 1 + 2^-8 is halfway: ties to even
        assert_eq!(widen(h.a[2]), -3.5);
        for j in 0..3 {
            for r in 0..2 {
                let got = widen(h.b_at(j, r));
                assert!((got - b[j * 2 + r]).abs() <= b[j * 2 + r].abs() / 256.0);
            }
        }
    }
}
