//! AVX2 + FMA kernels of the bf16 LoRA pair ([`super::HalfLora`]): each lane does the operations
//! of the scalar reference in `half_lora` in the same order, so the results are bit-identical to
//! it (the tests below check every shape class). A bf16 value widens to f32 exactly (a 16-bit
//! shift), so the only rounding is the FMAs', which both sides share.
//!
//! * shrink: `dot_bf16`'s 32 lanes as four 8-lane accumulators, the same pairwise reduction;
//! * expand: a stretch of columns reads whole panels front to back (each panel is `rank` rows of
//!   [`PANEL`] bf16), four panels in flight so the rank-long FMA chains overlap; columns before
//!   the first whole panel and after the last go through the scalar reference.

#![cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]

use super::half_lora::{expand_scalar, widen, HalfLora, DOT_LANES, PANEL};
use std::arch::x86_64::*;

/// Eight bf16 (bits at `p`) widened to f32.
///
/// SAFETY (callers): `p` points at 8 readable `u16`s; AVX2 is available.
#[inline(always)]
unsafe fn widen8(p: *const u16) -> __m256 {
    let h = _mm_loadu_si128(p.cast());
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
}

/// `out[r] = dot_bf16(x, A[r])` for every rank row, bit-identical to `shrink_scalar`.
///
/// # Safety
/// AVX2 and FMA must be available (a compile-time feature of the builds that compile this).
pub unsafe fn shrink(h: &HalfLora, x: &[f32], out: &mut [f32]) {
    let k = x.len();
    assert!(
        h.a.len() == h.rank * k && out.len() == h.rank,
        "shrink: shapes"
    );
    let body = k / DOT_LANES * DOT_LANES;
    for (o, ar) in out.iter_mut().zip(h.a.chunks_exact(k)) {
        // The scalar tail first, as `dot_bf16`.
        let mut tail = 0f32;
        for (&xv, &av) in x[body..].iter().zip(&ar[body..]) {
            tail = xv.mul_add(widen(av), tail);
        }
        // SAFETY: every load reads `DOT_LANES` elements at `i < body <= k` of `x` and of the
        // row `ar` (both `k` long).
        let v = unsafe {
            let (xp, ap) = (x.as_ptr(), ar.as_ptr());
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i < body {
                for (l, a) in acc.iter_mut().enumerate() {
                    let at = i + 8 * l;
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(at)), widen8(ap.add(at)), *a);
                }
                i += DOT_LANES;
            }
            // Lanes i += i + 16, then i + 8, i + 4, i + 2, i + 1: `dot_bf16`'s order.
            let a01 = _mm256_add_ps(acc[0], acc[2]);
            let a23 = _mm256_add_ps(acc[1], acc[3]);
            let a8 = _mm256_add_ps(a01, a23);
            let a4 = _mm_add_ps(_mm256_castps256_ps128(a8), _mm256_extractf128_ps::<1>(a8));
            let a2 = _mm_add_ps(a4, _mm_movehl_ps(a4, a4));
            let a1 = _mm_add_ss(a2, _mm_movehdup_ps(a2));
            _mm_cvtss_f32(a1)
        };
        *o = v + tail;
    }
}

/// `y[j] = coeff·(Σ_r s_r·B[j0 + j, r]) + y[j]`, bit-identical to `expand_scalar`.
///
/// # Safety
/// AVX2 and FMA must be available (a compile-time feature of the builds that compile this).
pub unsafe fn expand(h: &HalfLora, coeff: f32, s: &[f32], j0: usize, y: &mut [f32]) {
    let rank = h.rank;
    assert!(
        s.len() == rank && j0 + y.len() <= h.out_dim,
        "expand: shapes"
    );
    // Columns up to the first panel boundary, whole panels, then the rest.
    let head = (j0.next_multiple_of(PANEL) - j0).min(y.len());
    let whole = (y.len() - head) / PANEL;
    let (y_head, rest) = y.split_at_mut(head);
    let (y_body, y_tail) = rest.split_at_mut(whole * PANEL);
    expand_scalar(h, coeff, s, j0, y_head);
    let p0 = (j0 + head) / PANEL;
    let stride = rank * PANEL;
    let c = _mm256_set1_ps(coeff);
    let mut p = 0;
    // SAFETY: panels `p0 + p` for `p < whole` cover columns below `j0 + y.len() <= out_dim`, so
    // each of their `rank · PANEL` elements lies inside `bp`; `y_body` holds `whole · PANEL`.
    unsafe {
        let (bp, yp) = (h.bp.as_ptr().add(p0 * stride), y_body.as_mut_ptr());
        while p + 4 <= whole {
            let mut acc = [_mm256_setzero_ps(); 4];
            for (r, &sr) in s.iter().enumerate() {
                let sv = _mm256_set1_ps(sr);
                for (q, a) in acc.iter_mut().enumerate() {
                    let b = widen8(bp.add((p + q) * stride + r * PANEL));
                    *a = _mm256_fmadd_ps(sv, b, *a);
                }
            }
            for (q, a) in acc.iter().enumerate() {
                let yq = yp.add((p + q) * PANEL);
                _mm256_storeu_ps(yq, _mm256_fmadd_ps(c, *a, _mm256_loadu_ps(yq)));
            }
            p += 4;
        }
        while p < whole {
            let mut a = _mm256_setzero_ps();
            for (r, &sr) in s.iter().enumerate() {
                let b = widen8(bp.add(p * stride + r * PANEL));
                a = _mm256_fmadd_ps(_mm256_set1_ps(sr), b, a);
            }
            let yq = yp.add(p * PANEL);
            _mm256_storeu_ps(yq, _mm256_fmadd_ps(c, a, _mm256_loadu_ps(yq)));
            p += 1;
        }
    }
    expand_scalar(h, coeff, s, j0 + head + whole * PANEL, y_tail);
}

#[cfg(test)]
mod tests {
    use super::super::half_lora::shrink_scalar;
    use super::*;

    fn f(i: usize, s: usize) -> f32 {
        ((i * s % 101) as f32 - 50.0) / 37.0
    }

    /// Shrink and expand equal the scalar reference bit for bit: widths with and without a
    /// tail, ranks 1..17, every start column and length (unaligned heads, short tails, more and
    /// fewer than four panels).
    #[test]
    fn equal_the_scalar_reference_bit_for_bit() {
        for (k, out, rank) in [(96, 40, 16), (100, 37, 3), (7, 9, 1), (576, 200, 17)] {
            let a: Vec<f32> = (0..rank * k).map(|i| f(i, 7)).collect();
            let b: Vec<f32> = (0..out * rank).map(|i| f(i, 13)).collect();
            let h = HalfLora::from_f32(&a, &b, rank);
            let x: Vec<f32> = (0..k).map(|i| f(i, 3)).collect();
            let (mut got, mut want) = (vec![0f32; rank], vec![0f32; rank]);
            // SAFETY: this module is compiled only with AVX2 + FMA.
            unsafe { shrink(&h, &x, &mut got) };
            shrink_scalar(&h, &x, &mut want);
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(g, w)| g.to_bits() == w.to_bits()),
                "shrink k={k} rank={rank}"
            );
            for j0 in 0..out {
                for len in [0, 1, 5, 8, 9, 31, 33, out - j0]
                    .into_iter()
                    .filter(|&l| j0 + l <= out)
                {
                    let y0: Vec<f32> = (0..len).map(|i| f(i, 11)).collect();
                    let (mut g, mut w) = (y0.clone(), y0);
                    // SAFETY: as above; `j0 + len <= out`.
                    unsafe { expand(&h, 0.7, &want, j0, &mut g) };
                    expand_scalar(&h, 0.7, &want, j0, &mut w);
                    assert!(
                        g.iter().zip(&w).all(|(g, w)| g.to_bits() == w.to_bits()),
                        "expand k={k} out={out} rank={rank} j0={j0} len={len}"
                    );
                }
            }
        }
    }
}
