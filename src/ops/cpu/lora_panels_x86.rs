//! AVX2 + FMA kernels of [`super::lora_panels`], generic over the element
//! ([`PanelElem::widen8`]): each lane does the operations of the scalar reference there in the
//! same order, so the results are bit-identical to it (the tests below check every shape class
//! for both elements). Widening is exact, so the only rounding is the FMAs', which both share.
//!
//! * dot: the 32 lanes as four 8-lane accumulators, the same pairwise reduction;
//! * expand: a stretch of columns reads whole panels front to back, four panels in flight so the
//!   rank-long FMA chains overlap; columns before the first whole panel and after the last go
//!   through the scalar reference.

#![cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]

use super::lora_panels::{expand_scalar, PanelElem, DOT_LANES, PANEL};
use std::arch::x86_64::*;

/// `dot_scalar(x, a)`, bit for bit.
///
/// # Safety
/// AVX2 and FMA must be available (a compile-time feature of the builds that compile this).
pub unsafe fn dot<E: PanelElem>(x: &[f32], a: &[E]) -> f32 {
    let k = x.len();
    assert_eq!(a.len(), k, "dot: lengths");
    let body = k / DOT_LANES * DOT_LANES;
    // The scalar tail first, as `dot_scalar`.
    let mut tail = 0f32;
    for (&xv, &av) in x[body..].iter().zip(&a[body..]) {
        tail = xv.mul_add(av.to_f32(), tail);
    }
    // SAFETY: every load reads `DOT_LANES` elements at `i < body <= k` of `x` and `a`.
    let v = unsafe {
        let (xp, ap) = (x.as_ptr(), a.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i < body {
            for (l, c) in acc.iter_mut().enumerate() {
                let at = i + 8 * l;
                *c = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(at)), E::widen8(ap.add(at)), *c);
            }
            i += DOT_LANES;
        }
        // Lanes i += i + 16, then i + 8, i + 4, i + 2, i + 1: `dot_scalar`'s order.
        let a8 = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
        let a4 = _mm_add_ps(_mm256_castps256_ps128(a8), _mm256_extractf128_ps::<1>(a8));
        let a2 = _mm_add_ps(a4, _mm_movehl_ps(a4, a4));
        _mm_cvtss_f32(_mm_add_ss(a2, _mm_movehdup_ps(a2)))
    };
    v + tail
}

/// `expand_scalar(bp, coeff, s, j0, y)`, bit for bit.
///
/// # Safety
/// AVX2 and FMA must be available, and the columns `j0..j0 + y.len()` must lie within `bp`'s
/// panels (`(j0 + y.len()).div_ceil(PANEL) · PANEL · s.len() <= bp.len()`).
pub unsafe fn expand<E: PanelElem>(bp: &[E], coeff: f32, s: &[f32], j0: usize, y: &mut [f32]) {
    let rank = s.len();
    // Columns up to the first panel boundary, whole panels, then the rest.
    let head = (j0.next_multiple_of(PANEL) - j0).min(y.len());
    let whole = (y.len() - head) / PANEL;
    let (y_head, rest) = y.split_at_mut(head);
    let (y_body, y_tail) = rest.split_at_mut(whole * PANEL);
    expand_scalar(bp, coeff, s, j0, y_head);
    let p0 = (j0 + head) / PANEL;
    let stride = rank * PANEL;
    let c = _mm256_set1_ps(coeff);
    let mut p = 0;
    // SAFETY: panels `p0 + p` for `p < whole` cover columns below `j0 + y.len()`, inside `bp`
    // by the caller's contract; `y_body` holds `whole · PANEL` values.
    unsafe {
        let (bp, yp) = (bp.as_ptr().add(p0 * stride), y_body.as_mut_ptr());
        while p + 4 <= whole {
            let mut acc = [_mm256_setzero_ps(); 4];
            for (r, &sr) in s.iter().enumerate() {
                let sv = _mm256_set1_ps(sr);
                for (q, a) in acc.iter_mut().enumerate() {
                    let b = E::widen8(bp.add((p + q) * stride + r * PANEL));
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
                let b = E::widen8(bp.add(p * stride + r * PANEL));
                a = _mm256_fmadd_ps(_mm256_set1_ps(sr), b, a);
            }
            let yq = yp.add(p * PANEL);
            _mm256_storeu_ps(yq, _mm256_fmadd_ps(c, a, _mm256_loadu_ps(yq)));
            p += 1;
        }
    }
    expand_scalar(bp, coeff, s, j0 + head + whole * PANEL, y_tail);
}

#[cfg(test)]
mod tests {
    use super::super::lora_panels::{dot_scalar, to_panels};
    use super::*;

    fn f(i: usize, s: usize) -> f32 {
        ((i * s % 101) as f32 - 50.0) / 37.0
    }

    /// Dot and expand equal the scalar reference bit for bit, for bf16 and int8 elements:
    /// widths with and without a tail, ranks 1..17, every start column and length (unaligned
    /// heads, short tails, more and fewer than four panels).
    #[test]
    fn equal_the_scalar_reference_bit_for_bit() {
        let bf16 = |v: f32| half::bf16::from_f32(v).to_bits();
        let int8 = |v: f32| (v * 40.0) as i8;
        for (k, out, rank) in [(96, 40, 16), (100, 37, 3), (7, 9, 1), (576, 200, 17)] {
            let a: Vec<f32> = (0..k).map(|i| f(i, 7)).collect();
            let b: Vec<f32> = (0..out * rank).map(|i| f(i, 13)).collect();
            let x: Vec<f32> = (0..k).map(|i| f(i, 3)).collect();
            let s: Vec<f32> = (0..rank).map(|i| f(i, 19)).collect();
            let (ah, bh): (Vec<u16>, Vec<u16>) = (
                a.iter().map(|&v| bf16(v)).collect(),
                b.iter().map(|&v| bf16(v)).collect(),
            );
            check(&x, &ah, &s, out, &to_panels(&bh, rank));
            let (a8, b8): (Vec<i8>, Vec<i8>) = (
                a.iter().map(|&v| int8(v)).collect(),
                b.iter().map(|&v| int8(v)).collect(),
            );
            check(&x, &a8, &s, out, &to_panels(&b8, rank));
        }
    }

    fn check<E: PanelElem>(x: &[f32], a: &[E], s: &[f32], out: usize, bp: &[E]) {
        // SAFETY: this module is compiled only with AVX2 + FMA.
        let got = unsafe { dot(x, a) };
        assert_eq!(
            got.to_bits(),
            dot_scalar(x, a).to_bits(),
            "dot k={}",
            x.len()
        );
        for j0 in 0..out {
            for len in [0, 1, 5, 8, 9, 31, 33, out - j0]
                .into_iter()
                .filter(|&l| j0 + l <= out)
            {
                let y0: Vec<f32> = (0..len).map(|i| f(i, 11)).collect();
                let (mut g, mut w) = (y0.clone(), y0);
                // SAFETY: as above; `j0 + len <= out`, the panels' columns.
                unsafe { expand(bp, 0.7, s, j0, &mut g) };
                expand_scalar(bp, 0.7, s, j0, &mut w);
                assert!(
                    g.iter().zip(&w).all(|(g, w)| g.to_bits() == w.to_bits()),
                    "expand out={out} rank={} j0={j0} len={len}",
                    s.len()
                );
            }
        }
    }
}
