//! AVX2 / AVX-512 VNNI kernels for the k-quant formats (`Q4_K`, `Q5_K`, `Q6_K`) against
//! [`Q8KActs`]. A weight super-block is unpacked once per tile into eight 32-byte registers (one
//! per 32-value group) with their scales, then multiplied with `R` activation rows; per element
//! the arithmetic is [`super::scalar::dot_k`] / [`super::scalar::dot_q6k`]'s, bit for bit.
//! (Packed `Q4_K` matrices run [`super::simdp`].)

use super::acts::{Q8KActs, Q8KRow};
use super::blocks::{f16_at, scales_k4};
use super::format::{WeightFormat, QK_K};
use super::simd::{dot_scaled, hsum_i32, scale_vec};
use super::tile::Tile;
use std::arch::x86_64::*;
use std::marker::PhantomData;

/// One unpacked super-block: value `i` is `d * scale(i) * q[i / 32][i % 32] - dmin * mn[i / 32]`.
pub(crate) struct Unpacked {
    q: [__m256i; 8],
    /// Scales of lanes 0..4 and 4..8 of each 32-value group.
    sc: [(i16, i16); 8],
    d: f32,
    dmin: f32,
    mn: [u8; 8],
}

/// How one k-quant format unpacks.
pub(crate) trait FmtK {
    const FORMAT: WeightFormat;
    /// Values are signed (`Q6_K`) rather than unsigned with a minimum.
    const SIGNED: bool;
    /// # Safety
    /// `b` is one whole super-block.
    unsafe fn unpack(b: &[u8]) -> Unpacked;
}

/// Low and high nibbles of 32 bytes.
#[inline(always)]
unsafe fn nibbles32(qs: &[u8]) -> (__m256i, __m256i) {
    // SAFETY: 32 bytes (slice-checked); AVX2 at compile time.
    unsafe {
        let raw = _mm256_loadu_si256(qs[..32].as_ptr().cast());
        let mask = _mm256_set1_epi8(0xF);
        (
            _mm256_and_si256(raw, mask),
            _mm256_and_si256(_mm256_srli_epi16::<4>(raw), mask),
        )
    }
}

/// Bit `shift` of each byte of `v`, moved to `to` (`(v >> shift & 1) << to`).
#[inline(always)]
unsafe fn bit(v: __m256i, shift: i32, to: i32) -> __m256i {
    // SAFETY: AVX2 at compile time.
    unsafe {
        let b = _mm256_and_si256(
            _mm256_srl_epi16(v, _mm_cvtsi32_si128(shift)),
            _mm256_set1_epi8(1),
        );
        _mm256_sll_epi16(b, _mm_cvtsi32_si128(to))
    }
}

pub(crate) struct Q4K;
pub(crate) struct Q5K;
pub(crate) struct Q6K;

/// Q4_K and Q5_K: 6-bit scales and mins, 4-bit values plus (Q5_K) one high bit.
#[inline(always)]
unsafe fn unpack_k4(b: &[u8], high: Option<&[u8]>, qs: &[u8]) -> Unpacked {
    let (sc, mn) = scales_k4(&b[4..16]);
    // SAFETY: AVX2 at compile time.
    let mut q = [unsafe { _mm256_setzero_si256() }; 8];
    // SAFETY: `qs` holds 128 bytes and `high` 32 (slice-checked in the helpers).
    unsafe {
        let qh = high.map(|h| _mm256_loadu_si256(h[..32].as_ptr().cast()));
        for j in 0..4 {
            let (lo, hi) = nibbles32(&qs[32 * j..]);
            q[2 * j] = lo;
            q[2 * j + 1] = hi;
            if let Some(qh) = qh {
                q[2 * j] = _mm256_or_si256(lo, bit(qh, 2 * j as i32, 4));
                q[2 * j + 1] = _mm256_or_si256(hi, bit(qh, 2 * j as i32 + 1, 4));
            }
        }
    }
    let mut pairs = [(0i16, 0i16); 8];
    for (p, &s) in pairs.iter_mut().zip(&sc) {
        *p = (s as i16, s as i16);
    }
    Unpacked {
        q,
        sc: pairs,
        d: f16_at(b, 0),
        dmin: f16_at(b, 2),
        mn,
    }
}

impl FmtK for Q4K {
    const FORMAT: WeightFormat = WeightFormat::Q4_K;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn unpack(b: &[u8]) -> Unpacked {
        // SAFETY: forwarded.
        unsafe { unpack_k4(b, None, &b[16..144]) }
    }
}

impl FmtK for Q5K {
    const FORMAT: WeightFormat = WeightFormat::Q5_K;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn unpack(b: &[u8]) -> Unpacked {
        // SAFETY: forwarded.
        unsafe { unpack_k4(b, Some(&b[16..48]), &b[48..176]) }
    }
}

impl FmtK for Q6K {
    const FORMAT: WeightFormat = WeightFormat::Q6_K;
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn unpack(b: &[u8]) -> Unpacked {
        let (ql, qh) = (&b[0..128], &b[128..192]);
        // SAFETY: AVX2 at compile time; 32-byte loads of slices checked by `nibbles32`/indexing.
        unsafe {
            let mut q = [_mm256_setzero_si256(); 8];
            let m32 = _mm256_set1_epi8(32);
            for half in 0..2 {
                let h = _mm256_loadu_si256(qh[32 * half..32 * half + 32].as_ptr().cast());
                let (l0, l2) = nibbles32(&ql[64 * half..]);
                let (l1, l3) = nibbles32(&ql[64 * half + 32..]);
                for (g, l) in [l0, l1, l2, l3].into_iter().enumerate() {
                    let hb = _mm256_or_si256(bit(h, 2 * g as i32, 4), bit(h, 2 * g as i32 + 1, 5));
                    q[4 * half + g] = _mm256_sub_epi8(_mm256_or_si256(l, hb), m32);
                }
            }
            let mut sc = [(0i16, 0i16); 8];
            for (s, p) in sc.iter_mut().enumerate() {
                *p = (b[192 + 2 * s] as i8 as i16, b[193 + 2 * s] as i8 as i16);
            }
            Unpacked {
                q,
                sc,
                d: f16_at(b, 208),
                dmin: 0.0,
                mn: [0; 8],
            }
        }
    }
}

/// The kernel for k-quant format `F` with or without VNNI.
pub(crate) struct SimdK<'a, F, const VNNI: bool> {
    pub w: &'a [u8],
    pub acts: &'a Q8KActs,
    pub _f: PhantomData<F>,
}

/// Each minimum twice, as 16 i16 lanes lined up with the 16 `bsums` of a super-block.
#[inline(always)]
fn mins_dup(mn: &[u8; 8]) -> __m256i {
    let mut m = [0i16; 16];
    for (i, v) in m.iter_mut().enumerate() {
        *v = mn[i / 2] as i16;
    }
    // SAFETY: 32 readable bytes; AVX2 at compile time.
    unsafe { _mm256_loadu_si256(m.as_ptr().cast()) }
}

/// `Σ_s mn[s] * (bsums[2s] + bsums[2s + 1])` of one super-block (exact integer arithmetic).
#[inline(always)]
fn min_sum(mins: __m256i, bsums: &[i16]) -> i32 {
    // SAFETY: 16 i16 = 32 readable bytes (slice-checked); AVX2 at compile time.
    unsafe {
        let p = _mm256_madd_epi16(_mm256_loadu_si256(bsums[..16].as_ptr().cast()), mins);
        let s = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)))
    }
}

impl<F: FmtK, const VNNI: bool> Tile for SimdK<'_, F, VNNI> {
    #[inline(always)]
    unsafe fn tile<const R: usize, const C: usize>(&self, i: usize, j: usize) -> [[f32; C]; R] {
        let (nb, bb) = (self.acts.nb, F::FORMAT.block_bytes());
        let mut w: [&[u8]; C] = [&[]; C];
        for (c, w) in w.iter_mut().enumerate() {
            *w = &self.w[(j + c) * nb * bb..][..nb * bb];
        }
        let a: [Q8KRow; R] = self.acts.rows(i);
        // Scalar accumulators of the super-blocks' integer totals.
        let mut acc = [[0f32; C]; R];
        let mut summ = [[0f32; C]; R];
        // Plain loops, one weight super-block live at a time: closures over register arrays
        // (`array::from_fn`) were not inlined into the target-feature function, and C unpacked
        // super-blocks at once spilled.
        for b in 0..nb {
            for c in 0..C {
                // SAFETY: one whole super-block.
                let wv = unsafe { F::unpack(&w[c][b * bb..][..bb]) };
                let mins = mins_dup(&wv.mn);
                for r in 0..R {
                    let qa = &a[r].qs[QK_K * b..QK_K * (b + 1)];
                    // SAFETY: AVX2 at compile time; 32 readable bytes per load (slice-checked).
                    let mut isum = unsafe { _mm256_setzero_si256() };
                    for s in 0..8 {
                        // SAFETY: as above.
                        let av = unsafe { _mm256_loadu_si256(qa[32 * s..32 * s + 32].as_ptr().cast()) };
                        let sc = scale_vec::<VNNI>(wv.sc[s].0, wv.sc[s].1);
                        let p = if F::SIGNED {
                            dot_scaled::<VNNI, true>(wv.q[s], av, sc)
                        } else {
                            dot_scaled::<VNNI, false>(wv.q[s], av, sc)
                        };
                        // SAFETY: AVX2 at compile time.
                        isum = unsafe { _mm256_add_epi32(isum, p) };
                    }
                    let t = hsum_i32(isum) as f32;
                    acc[r][c] = t.mul_add(wv.d * a[r].d[b], acc[r][c]);
                    if !F::SIGNED {
                        let imin = min_sum(mins, &a[r].extra[16 * b..16 * b + 16]);
                        summ[r][c] = (-(wv.dmin * a[r].d[b])).mul_add(imin as f32, summ[r][c]);
                    }
                }
            }
        }
        // Q6_K has no minimum term: like `scalar::dot_q6k`, no `+ summ`.
        let total = |r: usize, c: usize| match F::SIGNED {
            true => acc[r][c],
            false => acc[r][c] + summ[r][c],
        };
        let mut out = [[0f32; C]; R];
        for (r, o) in out.iter_mut().enumerate() {
            for (c, o) in o.iter_mut().enumerate() {
                *o = total(r, c);
            }
        }
        out
    }
}
