//! x86-64 building blocks shared by the SIMD kernels: the 8-lane reduction tree of
//! `ops::cpu::dot`, and the u8×i8 → i32 lane dot product in its two encodings — AVX2
//! (`maddubs` + `madd`) and AVX-512 VNNI (`vpdpbusd` on 256-bit registers). Both give lane `l` =
//! the sum of the products of bytes `4l..4l+4` exactly (no i16 saturation for our operands: one
//! side is at most 128 in magnitude, the other at most 127, so a pair sums to at most 32512), so
//! the two instruction sets produce the same integers and, downstream, the same bits.

use std::arch::x86_64::*;

/// Sums the 8 lanes like `ops::cpu::dot`: lanes `l + 4`, then `l + 2`, then `0 + 1`.
#[inline(always)]
pub(crate) fn hsum(v: __m256) -> f32 {
    // SAFETY: AVX is enabled at compile time (the module is compiled only with avx2 + fma).
    unsafe {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2)))
    }
}

/// The sum of the 8 i32 lanes (exact: our block sums are far from overflowing).
#[inline(always)]
pub(crate) fn hsum_i32(v: __m256i) -> i32 {
    // SAFETY: AVX2 is enabled at compile time.
    unsafe {
        let s4 = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
        _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32::<1>(s2)))
    }
}

/// Lane `l` = Σ over bytes `4l..4l+4` of `u[i] * s[i]` (`u` unsigned, `s` signed).
#[inline(always)]
pub(crate) fn dot_u8i8<const VNNI: bool>(u: __m256i, s: __m256i) -> __m256i {
    if VNNI {
        // SAFETY: kernels instantiated with VNNI = true run only inside a function compiled with
        // avx512vnni + avx512vl, entered after run-time detection (`Isa::Avx512Vnni`).
        unsafe { dpbusd(u, s) }
    } else {
        // SAFETY: AVX2 is enabled at compile time.
        unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)) }
    }
}

#[target_feature(enable = "avx512vnni,avx512vl")]
#[inline]
unsafe fn dpbusd(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
}

/// `acc + dot_u8i8(u, s)`, lane by lane (wrapping i32 adds, so exactly the same integers). With
/// VNNI one `vpdpbusd` into `acc`: the compiler does not fold `dot_u8i8`'s separate add, and
/// that add was a third of a packed kernel's integer instructions.
#[inline(always)]
pub(crate) fn dot_u8i8_acc<const VNNI: bool>(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    if VNNI {
        // SAFETY: as in `dot_u8i8`.
        unsafe { dpbusd_acc(acc, u, s) }
    } else {
        // SAFETY: AVX2 is enabled at compile time.
        unsafe { _mm256_add_epi32(acc, dot_u8i8::<false>(u, s)) }
    }
}

#[target_feature(enable = "avx512vnni,avx512vl")]
#[inline]
unsafe fn dpbusd_acc(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, u, s)
}

/// Lane `l` = Σ over bytes `4l..4l+4` of `x[i] * a[i]`, both signed (`x` ≥ -128, `a` ≥ -127):
/// `|x| * sign(x) a`.
#[inline(always)]
pub(crate) fn dot_i8i8<const VNNI: bool>(x: __m256i, a: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled at compile time.
    let (ux, sa) = unsafe { (_mm256_sign_epi8(x, x), _mm256_sign_epi8(a, x)) };
    dot_u8i8::<VNNI>(ux, sa)
}

/// The per-lane scale for [`dot_scaled`]: `lo` for lanes 0..4, `hi` for lanes 4..8, encoded for
/// the instruction set (i16 pairs for `madd`, i32 lanes for VNNI's `mullo`).
#[inline(always)]
pub(crate) fn scale_vec<const VNNI: bool>(lo: i16, hi: i16) -> __m256i {
    // SAFETY: AVX2 at compile time.
    unsafe {
        match (VNNI, lo == hi) {
            (true, true) => _mm256_set1_epi32(lo as i32),
            (false, true) => _mm256_set1_epi16(lo),
            (true, false) => _mm256_set_m128i(_mm_set1_epi32(hi as i32), _mm_set1_epi32(lo as i32)),
            (false, false) => _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo)),
        }
    }
}

/// Lane `l` = `scale[l]` × Σ over bytes `4l..4l+4` of `w[i] * a[i]`, with `w` unsigned (or signed
/// when `SIGNED`, magnitude ≤ 32) and `scale` from [`scale_vec`].
#[inline(always)]
pub(crate) fn dot_scaled<const VNNI: bool, const SIGNED: bool>(
    w: __m256i,
    a: __m256i,
    scale: __m256i,
) -> __m256i {
    // SAFETY: AVX2 at compile time.
    let (u, s) = unsafe {
        if SIGNED {
            (_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w))
        } else {
            (w, a)
        }
    };
    if VNNI {
        // SAFETY: as in `dot_u8i8`.
        unsafe { _mm256_mullo_epi32(dpbusd(u, s), scale) }
    } else {
        // SAFETY: AVX2 at compile time.
        unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale) }
    }
}
