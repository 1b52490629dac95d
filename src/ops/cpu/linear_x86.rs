//! AVX2 + FMA form of [`super::linear`]'s tile: each output's 8 lanes are one 256-bit register,
//! fed by the same FMAs over `k` in the same order, then the same reduction tree (lanes `l + 4`,
//! `l + 2`, `l + 1`) and the same tail, so every dot is bit-identical to the scalar reference. (The
//! compiler turned the reference's lane arrays into pairs of 64-bit loads and 128-bit FMAs: the
//! attention's score dots, the largest part of a prefill, ran at a quarter of the width.)

#![cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]

use super::linear::LANES;
use std::arch::x86_64::*;

/// `linear`'s scalar reference tile (`tile_scalar`), bit for bit. Panics unless every row is `ws[0].len()` long.
#[inline(always)]
pub(crate) fn tile<const R: usize, const C: usize>(
    xs: [&[f32]; R],
    ws: [&[f32]; C],
) -> [[f32; C]; R] {
    let k = ws[0].len();
    assert!(
        xs.iter().chain(&ws).all(|v| v.len() == k),
        "tile: rows of different lengths"
    );
    let body = k / LANES * LANES;
    let mut out = [[0f32; C]; R];
    // SAFETY: AVX2 + FMA are compile-time features of this build; every load reads 8 values at
    // `i + 8 <= body <= k` of a row that is `k` long (asserted above).
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut i = 0;
        while i < body {
            let mut wv = [_mm256_setzero_ps(); C];
            for (v, w) in wv.iter_mut().zip(&ws) {
                *v = _mm256_loadu_ps(w.as_ptr().add(i));
            }
            for (a, x) in acc.iter_mut().zip(&xs) {
                let xv = _mm256_loadu_ps(x.as_ptr().add(i));
                for (a, w) in a.iter_mut().zip(&wv) {
                    *a = _mm256_fmadd_ps(xv, *w, *a);
                }
            }
            i += LANES;
        }
        for ((o, a), x) in out.iter_mut().zip(&acc).zip(&xs) {
            for ((o, a), w) in o.iter_mut().zip(a).zip(&ws) {
                // Lanes l += l + 4, then l + 2, then l + 1: the reference's tree.
                let a4 = _mm_add_ps(_mm256_castps256_ps128(*a), _mm256_extractf128_ps::<1>(*a));
                let a2 = _mm_add_ps(a4, _mm_movehl_ps(a4, a4));
                let mut s = _mm_cvtss_f32(_mm_add_ss(a2, _mm_movehdup_ps(a2)));
                for t in body..k {
                    s = x[t].mul_add(w[t], s);
                }
                *o = s;
            }
        }
    }
    out
}
