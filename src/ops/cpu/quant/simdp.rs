//! AVX2 / AVX-512 VNNI kernels for matrices in the packed layout (`super::packed`): a tile is `R`
//! activation rows × one group of 8 weight rows, and lane `l` of every register belongs to weight
//! row `l`. Per block the group's codes are unpacked once into 8 registers (4 values of each row),
//! each activation row's matching 4 bytes are broadcast, and u8×i8 dot products give the block's
//! exact integer sums of all 8 rows at once; scales and minimums of the 8 rows are one f16
//! conversion each. Per element the arithmetic is [`super::scalar::dot32`]'s, bit for bit.

use super::acts::Q8Acts;
use super::format::WeightFormat;
use super::packed::{group_block, GroupBlock};
use super::simd::dot_u8i8;
use super::tile::GroupTile;
use std::arch::x86_64::*;
use std::marker::PhantomData;

/// How one packed format turns its code words into unsigned codes.
pub(crate) trait PackedFmt {
    const FORMAT: WeightFormat;
    /// Value index (within the 32-value block) of the first of the 4 values of register `k`.
    const POS: [usize; 8];
    /// The block's 8 code registers.
    ///
    /// # Safety
    /// `p` points at the group-block's first code word (all words readable).
    unsafe fn codes(p: *const u8) -> [__m256i; 8];
    /// `s + ` the lane sums of `u × a` as signed products of the stored values, and the multiple
    /// of the activation block's integer sum still to subtract (the codes' offset).
    ///
    /// # Safety
    /// AVX2 (and, with `VNNI`, avx512vnni + avx512vl) available.
    unsafe fn dot<const VNNI: bool>(s: __m256i, u: __m256i, a: __m256i) -> __m256i;
    /// What [`Self::dot`] leaves to subtract: `offset × Σ a` per block.
    fn offset<const VNNI: bool>() -> i32;
}

/// The 4-bit formats: word `k` gives values `4k..` (low nibbles) and `16+4k..` (high nibbles).
#[inline(always)]
unsafe fn nibble_words(p: *const u8) -> [__m256i; 8] {
    // SAFETY: 4 readable 32-byte words at `p` (the caller's contract); AVX2 at compile time.
    unsafe {
        let mask = _mm256_set1_epi8(0xF);
        let mut u = [_mm256_setzero_si256(); 8];
        for k in 0..4 {
            let w = _mm256_loadu_si256(p.add(32 * k).cast());
            u[k] = _mm256_and_si256(w, mask);
            u[k + 4] = _mm256_and_si256(_mm256_srli_epi16::<4>(w), mask);
        }
        u
    }
}

/// `s + dot` for codes below 16 (no `maddubs` saturation: pairs stay under 2 × 15 × 128).
#[inline(always)]
unsafe fn dot_small<const VNNI: bool>(s: __m256i, u: __m256i, a: __m256i) -> __m256i {
    // SAFETY: AVX2 at compile time (VNNI: forwarded from the caller).
    unsafe { _mm256_add_epi32(s, dot_u8i8::<VNNI>(u, a)) }
}

const NIBBLE_POS: [usize; 8] = [0, 4, 8, 12, 16, 20, 24, 28];

pub(crate) struct Q4_0;
impl PackedFmt for Q4_0 {
    const FORMAT: WeightFormat = WeightFormat::Q4_0;
    const POS: [usize; 8] = NIBBLE_POS;
    #[inline(always)]
    unsafe fn codes(p: *const u8) -> [__m256i; 8] {
        // SAFETY: forwarded.
        unsafe { nibble_words(p) }
    }
    #[inline(always)]
    unsafe fn dot<const VNNI: bool>(s: __m256i, u: __m256i, a: __m256i) -> __m256i {
        // SAFETY: forwarded.
        unsafe { dot_small::<VNNI>(s, u, a) }
    }
    /// Codes are `q + 8`.
    #[inline(always)]
    fn offset<const VNNI: bool>() -> i32 {
        8
    }
}

pub(crate) struct Q4_1;
impl PackedFmt for Q4_1 {
    const FORMAT: WeightFormat = WeightFormat::Q4_1;
    const POS: [usize; 8] = NIBBLE_POS;
    #[inline(always)]
    unsafe fn codes(p: *const u8) -> [__m256i; 8] {
        // SAFETY: forwarded.
        unsafe { nibble_words(p) }
    }
    #[inline(always)]
    unsafe fn dot<const VNNI: bool>(s: __m256i, u: __m256i, a: __m256i) -> __m256i {
        // SAFETY: forwarded.
        unsafe { dot_small::<VNNI>(s, u, a) }
    }
    #[inline(always)]
    fn offset<const VNNI: bool>() -> i32 {
        0
    }
}

pub(crate) struct Q8_0;
impl PackedFmt for Q8_0 {
    const FORMAT: WeightFormat = WeightFormat::Q8_0;
    const POS: [usize; 8] = [0, 4, 8, 12, 16, 20, 24, 28];
    #[inline(always)]
    unsafe fn codes(p: *const u8) -> [__m256i; 8] {
        // SAFETY: 8 readable 32-byte words at `p`; AVX2 at compile time.
        unsafe {
            let mut u = [_mm256_setzero_si256(); 8];
            for (k, u) in u.iter_mut().enumerate() {
                *u = _mm256_loadu_si256(p.add(32 * k).cast());
            }
            u
        }
    }
    /// VNNI multiplies the stored `q + 128` directly (`vpdpbusd` does not saturate) and leaves
    /// `128 × Σ a` to subtract; AVX2 flips the codes back to `q` and uses `|q| × sign(a, q)`
    /// (pairs stay under 2 × 128 × 127, so `maddubs` does not saturate).
    #[inline(always)]
    unsafe fn dot<const VNNI: bool>(s: __m256i, u: __m256i, a: __m256i) -> __m256i {
        // SAFETY: AVX2 at compile time (VNNI: forwarded from the caller).
        unsafe {
            match VNNI {
                true => _mm256_add_epi32(s, dot_u8i8::<true>(u, a)),
                false => {
                    let q = _mm256_xor_si256(u, _mm256_set1_epi8(0x80u8 as i8));
                    let (uq, sa) = (_mm256_sign_epi8(q, q), _mm256_sign_epi8(a, q));
                    _mm256_add_epi32(s, dot_u8i8::<false>(uq, sa))
                }
            }
        }
    }
    #[inline(always)]
    fn offset<const VNNI: bool>() -> i32 {
        if VNNI {
            128
        } else {
            0
        }
    }
}

/// The kernel for packed format `F` with or without VNNI.
pub(crate) struct SimdPacked<'a, F, const VNNI: bool> {
    pub w: &'a [u8],
    pub acts: &'a Q8Acts,
    pub _f: PhantomData<F>,
}

impl<F: PackedFmt, const VNNI: bool> GroupTile for SimdPacked<'_, F, VNNI> {
    #[inline(always)]
    unsafe fn tile<const R: usize>(&self, i: usize, g: usize) -> [[f32; 8]; R] {
        let nb = self.acts.nb;
        let gb: GroupBlock = group_block(F::FORMAT);
        let group = &self.w[g * nb * gb.bytes..(g + 1) * nb * gb.bytes];
        let a: [_; R] = std::array::from_fn(|r| self.acts.row(i + r));
        let off = F::offset::<VNNI>();
        // SAFETY (the block below): AVX2 + FMA + F16C at compile time (VNNI: the caller's
        // contract); every pointer is inside `group` (whole group-blocks) or inside an
        // activation row's block of 32 bytes (`qa`, 4-byte reads at POS[k] ≤ 28).
        unsafe {
            let mut acc = [_mm256_setzero_ps(); R];
            let mut summ = [_mm256_setzero_ps(); R];
            for b in 0..nb {
                let p = group[b * gb.bytes..(b + 1) * gb.bytes].as_ptr();
                let d = _mm256_cvtph_ps(_mm_loadu_si128(p.add(gb.d).cast()));
                let m = gb
                    .m
                    .map(|mo| _mm256_cvtph_ps(_mm_loadu_si128(p.add(mo).cast())));
                let u = F::codes(p.add(gb.codes));
                for r in 0..R {
                    let qa = a[r].qs[32 * b..32 * b + 32].as_ptr();
                    let bcast = |k: usize| {
                        _mm256_set1_epi32(std::ptr::read_unaligned(qa.add(F::POS[k]).cast()))
                    };
                    let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                    for k in (0..8).step_by(2) {
                        s0 = F::dot::<VNNI>(s0, u[k], bcast(k));
                        s1 = F::dot::<VNNI>(s1, u[k + 1], bcast(k + 1));
                    }
                    let mut isum = _mm256_add_epi32(s0, s1);
                    if off != 0 {
                        isum = _mm256_sub_epi32(isum, _mm256_set1_epi32(off * a[r].qsum[b]));
                    }
                    let dd = _mm256_mul_ps(d, _mm256_set1_ps(a[r].d[b]));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), dd, acc[r]);
                    if let Some(m) = m {
                        summ[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(a[r].extra[b]), summ[r]);
                    }
                }
            }
            std::array::from_fn(|r| {
                let mut out = [0f32; 8];
                _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(acc[r], summ[r]));
                out
            })
        }
    }
}
