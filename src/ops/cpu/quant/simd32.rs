//! AVX2 / AVX-512 VNNI kernels for the 32-value block formats (`Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`,
//! `Q8_0`) in ggml's own row layout, against [`Q8Acts`]. Each block is unpacked to 32 bytes once
//! per tile and multiplied with `R` activation rows; per element the arithmetic is
//! [`super::scalar::dot32`]'s, bit for bit. (Matrices packed for the CPU run [`super::simdp`].)

use super::acts::Q8Acts;
use super::blocks::f16_at;
use super::format::WeightFormat;
use super::simd::{dot_i8i8, dot_u8i8, hsum_i32};
use super::tile::Tile;
use std::arch::x86_64::*;
use std::marker::PhantomData;

/// How one 32-value format unpacks.
pub(crate) trait Fmt32 {
    const FORMAT: WeightFormat;
    /// Whether the values are signed (no minimum); otherwise 0..=31 plus a minimum `m`.
    const SIGNED: bool;
    /// The 32 values as bytes in row order, the scale `d`, the minimum `m` (0 when `SIGNED`).
    ///
    /// # Safety
    /// `b` is the start of a whole block.
    unsafe fn load(b: &[u8]) -> (__m256i, f32, f32);
}

/// Bytes 0..16 = low nibbles, 16..32 = high nibbles of 16 packed bytes.
#[inline(always)]
unsafe fn nibbles(qs: &[u8]) -> __m256i {
    debug_assert!(qs.len() >= 16);
    // SAFETY: 16 readable bytes (checked by the block length); AVX2 at compile time.
    unsafe {
        let raw = _mm_loadu_si128(qs.as_ptr().cast());
        let mask = _mm_set1_epi8(0xF);
        let lo = _mm_and_si128(raw, mask);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(raw), mask);
        _mm256_set_m128i(hi, lo)
    }
}

/// 0xFF in byte `i` where bit `i` of the little-endian u32 at `qh` is set.
#[inline(always)]
unsafe fn bits(qh: &[u8]) -> __m256i {
    let x = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]) as i32;
    // SAFETY: AVX2 at compile time.
    unsafe {
        let spread = _mm256_set_epi64x(
            0x0303030303030303,
            0x0202020202020202,
            0x0101010101010101,
            0,
        );
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x), spread);
        let all_but_bit = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
        _mm256_cmpeq_epi8(_mm256_or_si256(bytes, all_but_bit), _mm256_set1_epi64x(-1))
    }
}

macro_rules! fmt32 {
    ($name:ident, $f:ident, $signed:expr, |$b:ident| $body:expr) => {
        pub(crate) struct $name;
        impl Fmt32 for $name {
            const FORMAT: WeightFormat = WeightFormat::$f;
            const SIGNED: bool = $signed;
            #[inline(always)]
            unsafe fn load($b: &[u8]) -> (__m256i, f32, f32) {
                // SAFETY: the block has the format's length; AVX2 at compile time.
                unsafe { $body }
            }
        }
    };
}

fmt32!(Q4_0, Q4_0, true, |b| {
    let q = _mm256_sub_epi8(nibbles(&b[2..18]), _mm256_set1_epi8(8));
    (q, f16_at(b, 0), 0.0)
});
fmt32!(Q4_1, Q4_1, false, |b| (
    nibbles(&b[4..20]),
    f16_at(b, 0),
    f16_at(b, 2)
));
fmt32!(Q5_0, Q5_0, true, |b| {
    // q - 16 = q4 | 0xF0 where the high bit is clear.
    let high = _mm256_andnot_si256(bits(&b[2..6]), _mm256_set1_epi8(0xF0u8 as i8));
    (_mm256_or_si256(nibbles(&b[6..22]), high), f16_at(b, 0), 0.0)
});
fmt32!(Q5_1, Q5_1, false, |b| {
    let high = _mm256_and_si256(bits(&b[4..8]), _mm256_set1_epi8(0x10));
    let q = _mm256_or_si256(nibbles(&b[8..24]), high);
    (q, f16_at(b, 0), f16_at(b, 2))
});
fmt32!(Q8_0, Q8_0, true, |b| {
    let q = _mm256_loadu_si256(b[2..34].as_ptr().cast());
    (q, f16_at(b, 0), 0.0)
});

/// The kernel for format `F` with or without VNNI.
pub(crate) struct Simd32<'a, F, const VNNI: bool> {
    pub w: &'a [u8],
    pub acts: &'a Q8Acts,
    pub _f: PhantomData<F>,
}

impl<F: Fmt32, const VNNI: bool> Tile for Simd32<'_, F, VNNI> {
    #[inline(always)]
    unsafe fn tile<const R: usize, const C: usize>(&self, i: usize, j: usize) -> [[f32; C]; R] {
        let (nb, bb) = (self.acts.nb, F::FORMAT.block_bytes());
        let mut w: [&[u8]; C] = [&[]; C];
        for (c, w) in w.iter_mut().enumerate() {
            *w = &self.w[(j + c) * nb * bb..][..nb * bb];
        }
        let a: [_; R] = self.acts.rows(i);
        let mut acc = [[0f32; C]; R];
        let mut summ = [[0f32; C]; R];
        for b in 0..nb {
            // SAFETY: AVX2 at compile time.
            let mut wv = [unsafe { (_mm256_setzero_si256(), 0f32, 0f32) }; C];
            for (c, v) in wv.iter_mut().enumerate() {
                // SAFETY: each slice is one whole block of the format.
                *v = unsafe { F::load(&w[c][b * bb..][..bb]) };
            }
            for r in 0..R {
                let qa = &a[r].qs[32 * b..32 * b + 32];
                // SAFETY: 32 readable bytes; AVX2 at compile time.
                let av = unsafe { _mm256_loadu_si256(qa.as_ptr().cast()) };
                let (da, sa) = (a[r].d[b], a[r].extra[b]);
                for c in 0..C {
                    let (q, d, m) = wv[c];
                    let isum = if F::SIGNED {
                        dot_i8i8::<VNNI>(q, av)
                    } else {
                        dot_u8i8::<VNNI>(q, av)
                    };
                    acc[r][c] = (hsum_i32(isum) as f32).mul_add(d * da, acc[r][c]);
                    if !F::SIGNED {
                        summ[r][c] = m.mul_add(sa, summ[r][c]);
                    }
                }
            }
        }
        for (a, s) in acc.iter_mut().zip(&summ) {
            for (a, s) in a.iter_mut().zip(s) {
                *a += s;
            }
        }
        acc
    }
}
