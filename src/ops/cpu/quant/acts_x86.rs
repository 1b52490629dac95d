//! AVX2 quantization of one 32-value activation block: [`super::acts`]'s `q8_block` (ggml's
//! `quantize_row_q8_1` rounding) in four 8-lane registers, bit for bit — the same maximum (NaNs
//! ignored), the same scale and reciprocal, the same round-half-away-from-zero, the same
//! saturating conversion (NaN to 0), the same integer sum. The scalar function stays the
//! reference; the test below compares the two on every class of value.

use std::arch::x86_64::*;

/// Values per block.
pub(super) const BLOCK: usize = 32;

/// `q8_block` for a block of exactly [`BLOCK`] values: fills `q`, sets `sum[0] = d · Σ q`, and
/// returns the scale `d` and the integer sum of `q`.
pub(super) fn q8_block32(x: &[f32], q: &mut [i8], sum: &mut [f32]) -> (f32, i32) {
    assert!(x.len() == BLOCK && q.len() == BLOCK, "q8_block32: a block is 32 values");
    // SAFETY: AVX2 + FMA are compile-time features of the builds that compile this module; the
    // loads read 4 × 8 values of `x` and the store writes 32 bytes of `q` (lengths asserted).
    let (d, total) = unsafe {
        let p = x.as_ptr();
        let v = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(p.add(o)));
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        // `max(|v|, m)` returns `m` when `|v|` is NaN, as `f32::max` ignores a NaN; `m` is never
        // NaN. A maximum does not round, so any order gives the scalar fold's bits.
        let mut m = _mm256_setzero_ps();
        for v in v {
            m = _mm256_max_ps(_mm256_and_ps(v, abs), m);
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
        let sign = _mm256_set1_ps(-0.0);
        let (lo, hi) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
        let mut n = [_mm256_setzero_si256(); 4];
        let mut acc = _mm256_setzero_si256();
        for (n, v) in n.iter_mut().zip(v) {
            let y = _mm256_mul_ps(v, id);
            // round_away: trunc, then one step away from zero when the exact remainder ≥ 0.5.
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
            let rem = _mm256_andnot_ps(sign, _mm256_sub_ps(y, t));
            let away = _mm256_or_ps(_mm256_and_ps(y, sign), one);
            let step = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(rem, half), away);
            let r = _mm256_add_ps(t, step);
            // `as i8`: NaN to 0, then saturate to [-128, 127] (exact integers convert exactly).
            let r = _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(r, r), r);
            let r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
            *n = _mm256_cvttps_epi32(r);
            acc = _mm256_add_epi32(acc, *n);
        }
        let packed = _mm256_packs_epi16(
            _mm256_packs_epi32(n[0], n[1]),
            _mm256_packs_epi32(n[2], n[3]),
        );
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let bytes = _mm256_permutevar8x32_epi32(packed, order);
        _mm256_storeu_si256(q.as_mut_ptr().cast(), bytes);
        let a4 = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256::<1>(acc));
        let a2 = _mm_add_epi32(a4, _mm_unpackhi_epi64(a4, a4));
        let a1 = _mm_add_epi32(a2, _mm_shuffle_epi32::<0b01>(a2));
        (d, _mm_cvtsi128_si32(a1))
    };
    sum[0] = d * total as f32;
    (d, total)
}
