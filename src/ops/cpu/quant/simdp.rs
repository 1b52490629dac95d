//! AVX2 / AVX-512 VNNI kernels for matrices in the packed layout (`super::packed`): a tile is `R`
//! activation rows × one group of 8 weight rows, and lane `l` of every register belongs to weight
//! row `l`. Per block the group's codes are unpacked once into 8 registers (4 values of each row),
//! each activation row's matching 4 bytes are broadcast, and u8×i8 dot products give the block's
//! exact integer sums of all 8 rows at once; scales and minimums of the 8 rows are one f16
//! conversion each. Per element the arithmetic is [`super::scalar::dot32`]'s (`Q4_K`, `Q5_K`:
//! [`super::scalar::dot_k`]'s, `Q6_K`: [`super::scalar::dot_q6k`]'s), bit for bit.

use super::acts::{Q8Acts, Q8KActs};
use super::format::{WeightFormat, QK_K};
use super::packed::{group_block, k4, q6, GroupBlock};
use super::simd::dot_u8i8_acc;
use super::tile::GroupTile;
use std::arch::x86_64::*;
use std::marker::PhantomData;

/// How one packed format turns its code words into unsigned codes.
pub(crate) trait PackedFmt {
    const FORMAT: WeightFormat;
    /// The block's 8 code registers; register `k` holds values `4k..4k+4` of every row.
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

/// The 8 lanes of `v` (lane `l` = weight row `l` of the group).
#[inline(always)]
fn lanes(v: __m256) -> [f32; 8] {
    let mut out = [0f32; 8];
    // SAFETY: 8 writable f32; AVX at compile time.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
    out
}

/// `s + dot` for codes below 64 (no `maddubs` saturation: pairs stay under 2 × 63 × 128).
#[inline(always)]
unsafe fn dot_small<const VNNI: bool>(s: __m256i, u: __m256i, a: __m256i) -> __m256i {
    dot_u8i8_acc::<VNNI>(s, u, a)
}

/// The 4-bit formats: codes `q + offset` (Q4_0: 8; Q4_1: 0, with a minimum instead).
macro_rules! nibble_fmt {
    ($name:ident, $offset:expr) => {
        pub(crate) struct $name;
        impl PackedFmt for $name {
            const FORMAT: WeightFormat = WeightFormat::$name;
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
                $offset
            }
        }
    };
}
nibble_fmt!(Q4_0, 8);
nibble_fmt!(Q4_1, 0);

pub(crate) struct Q8_0;
impl PackedFmt for Q8_0 {
    const FORMAT: WeightFormat = WeightFormat::Q8_0;
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
                true => dot_u8i8_acc::<true>(s, u, a),
                false => {
                    let q = _mm256_xor_si256(u, _mm256_set1_epi8(0x80u8 as i8));
                    let (uq, sa) = (_mm256_sign_epi8(q, q), _mm256_sign_epi8(a, q));
                    dot_u8i8_acc::<false>(s, uq, sa)
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
        let a: [_; R] = self.acts.rows(i);
        let off = F::offset::<VNNI>();
        // SAFETY (the block below): AVX2 + FMA + F16C at compile time (VNNI: the caller's
        // contract); every pointer is inside `group` (whole group-blocks) or inside an
        // activation row's block of 32 bytes (`qa`, 4-byte reads at 4k ≤ 28).
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
                        _mm256_set1_epi32(std::ptr::read_unaligned(qa.add(4 * k).cast()))
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
            let mut out = [[0f32; 8]; R];
            for (o, (a, s)) in out.iter_mut().zip(acc.iter().zip(&summ)) {
                *o = lanes(_mm256_add_ps(*a, *s));
            }
            out
        }
    }
}

/// The kernel for packed `Q4_K` and `Q5_K` (`super::packed::k4`) with or without VNNI: per super-block and
/// pair of sub-blocks, 8 code words give the 16 registers of two sub-blocks; per activation row,
/// each sub-block's integer sums (8 rows in the lanes) times its 8 scales accumulate the
/// super-block's exact `isum`, and the minimums times the activation's sub-block sums its `imin`.
/// `HIGH`: `Q5_K` (the fifth bits in `k4::QH`), else `Q4_K`.
pub(crate) struct SimdPackedK<'a, const VNNI: bool, const HIGH: bool> {
    pub w: &'a [u8],
    pub acts: &'a Q8KActs,
}

impl<const VNNI: bool, const HIGH: bool> GroupTile for SimdPackedK<'_, VNNI, HIGH> {
    #[inline(always)]
    unsafe fn tile<const R: usize>(&self, i: usize, g: usize) -> [[f32; 8]; R] {
        let nb = self.acts.nb;
        let gbytes = if HIGH { k4::BYTES_Q5 } else { k4::BYTES };
        let group = &self.w[g * nb * gbytes..(g + 1) * nb * gbytes];
        let a: [_; R] = self.acts.rows(i);
        // With VNNI the high nibbles stay in place (`w & 0xF0`, 16 × the value: `vpdpbusd` does
        // not saturate, unlike AVX2's `maddubs`), the low nibbles' scales are multiplied by 16 to
        // match, and the super-block's sum is divided by 16 at the end: one shift per super-block
        // instead of one per code word, and every term stays exact (16 × |isum| < 2^29).
        let hi_shift = VNNI && !HIGH;
        // SAFETY (the block below): AVX2 + FMA + F16C at compile time (VNNI: the caller's
        // contract); every pointer is inside `group` (whole group-blocks) or inside an
        // activation row's super-block (`qa`: 4-byte reads at offsets ≤ 252; `bs`: 32 bytes).
        unsafe {
            let mut acc = [_mm256_setzero_ps(); R];
            let mut summ = [_mm256_setzero_ps(); R];
            let mask = _mm256_set1_epi8(0xF);
            let mask_hi = _mm256_set1_epi8(0xF0u8 as i8);
            for b in 0..nb {
                let p = group[b * gbytes..(b + 1) * gbytes].as_ptr();
                let d = _mm256_cvtph_ps(_mm_loadu_si128(p.add(k4::D).cast()));
                let dmin = _mm256_cvtph_ps(_mm_loadu_si128(p.add(k4::DMIN).cast()));
                let bytes8 = |at: usize| _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(at).cast()));
                let mut isum = [_mm256_setzero_si256(); R];
                let mut imin = [_mm256_setzero_si256(); R];
                // imin = Σ_s mn_s × (bsums[2s] + bsums[2s+1]), as i16 pairs: lane l of `mn[t]`
                // is (mn[2t][l], mn[2t+1][l]), and each row's pair sums (hadd of its 16 bsums)
                // are broadcast two at a time, so one `pmaddwd` covers two sub-blocks.
                let mut mn = [_mm256_setzero_si256(); 4];
                for (t, mn) in mn.iter_mut().enumerate() {
                    let v = _mm_loadu_si128(p.add(k4::MN + 16 * t).cast());
                    *mn = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(v, _mm_srli_si128::<8>(v)));
                }
                for r in 0..R {
                    let bs = _mm256_loadu_si256(a[r].extra[16 * b..16 * b + 16].as_ptr().cast());
                    // Lanes 0..4 of each 128-bit half: pair sums 0..4 (low half), 4..8 (high).
                    let pairs = _mm256_hadd_epi16(bs, bs);
                    for (t, mn) in mn.iter().enumerate() {
                        // i32 word t of the pair sums: t < 2 in the low half, else the high one.
                        let idx = _mm256_set1_epi32(if t < 2 { t as i32 } else { t as i32 + 2 });
                        let w = _mm256_permutevar8x32_epi32(pairs, idx);
                        imin[r] = _mm256_add_epi32(imin[r], _mm256_madd_epi16(*mn, w));
                    }
                }
                for j in 0..4 {
                    let (mut sc_lo, sc_hi) = (bytes8(k4::SC + 16 * j), bytes8(k4::SC + 16 * j + 8));
                    if hi_shift {
                        sc_lo = _mm256_slli_epi32::<4>(sc_lo);
                    }
                    let mut lo = [_mm256_setzero_si256(); 8];
                    let mut hi = [_mm256_setzero_si256(); 8];
                    for k in 0..8 {
                        let w = _mm256_loadu_si256(p.add(k4::CODES + 256 * j + 32 * k).cast());
                        lo[k] = _mm256_and_si256(w, mask);
                        hi[k] = match hi_shift {
                            true => _mm256_and_si256(w, mask_hi),
                            false => _mm256_and_si256(_mm256_srli_epi16::<4>(w), mask),
                        };
                        if HIGH {
                            // Bit 2j (2j + 1) of each qh byte is bit 4 of the value.
                            let qh = _mm256_loadu_si256(p.add(k4::QH + 32 * k).cast());
                            let one = _mm256_set1_epi8(1);
                            let bit = |s: i32| {
                                let b = _mm256_and_si256(
                                    _mm256_srl_epi16(qh, _mm_cvtsi32_si128(s)),
                                    one,
                                );
                                _mm256_slli_epi16::<4>(b)
                            };
                            lo[k] = _mm256_or_si256(lo[k], bit(2 * j as i32));
                            hi[k] = _mm256_or_si256(hi[k], bit(2 * j as i32 + 1));
                        }
                    }
                    for r in 0..R {
                        let qa = a[r].qs[QK_K * b + 64 * j..QK_K * b + 64 * j + 64].as_ptr();
                        let bcast = |at: usize| {
                            _mm256_set1_epi32(std::ptr::read_unaligned(qa.add(at).cast()))
                        };
                        let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                        for k in 0..8 {
                            s0 = dot_small::<VNNI>(s0, lo[k], bcast(4 * k));
                            s1 = dot_small::<VNNI>(s1, hi[k], bcast(32 + 4 * k));
                        }
                        let t = _mm256_add_epi32(
                            _mm256_mullo_epi32(s0, sc_lo),
                            _mm256_mullo_epi32(s1, sc_hi),
                        );
                        isum[r] = _mm256_add_epi32(isum[r], t);
                    }
                }
                for r in 0..R {
                    if hi_shift {
                        isum[r] = _mm256_srai_epi32::<4>(isum[r]);
                    }
                    let da = _mm256_set1_ps(a[r].d[b]);
                    acc[r] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(isum[r]),
                        _mm256_mul_ps(d, da),
                        acc[r],
                    );
                    let neg = _mm256_xor_ps(_mm256_mul_ps(dmin, da), _mm256_set1_ps(-0.0));
                    summ[r] = _mm256_fmadd_ps(neg, _mm256_cvtepi32_ps(imin[r]), summ[r]);
                }
            }
            let mut out = [[0f32; 8]; R];
            for (o, (a, s)) in out.iter_mut().zip(acc.iter().zip(&summ)) {
                *o = lanes(_mm256_add_ps(*a, *s));
            }
            out
        }
    }
}

/// The kernel for packed `Q6_K` (`super::packed::q6`) with or without VNNI. Per super-block and
/// half `h` of ggml's `qh`, each `qh` word with its two `ql` words (chunks `2h`, `2h + 1`) gives
/// four registers of unsigned 6-bit codes (`q + 32`) for 8 rows: the `qh` bit pairs are moved to
/// bits 4-5 with constant shifts. Per activation row, each 16-value sub-block's sums times its 8
/// scales accumulate the super-block's `isum`, and `32 × Σ_t sc_t · bsum_t` (integer, by
/// `pmaddwd` on pairs of sub-blocks) takes the codes' offset back out.
pub(crate) struct SimdPackedQ6<'a, const VNNI: bool> {
    pub w: &'a [u8],
    pub acts: &'a Q8KActs,
}

impl<const VNNI: bool> GroupTile for SimdPackedQ6<'_, VNNI> {
    #[inline(always)]
    unsafe fn tile<const R: usize>(&self, i: usize, g: usize) -> [[f32; 8]; R] {
        let nb = self.acts.nb;
        let group = &self.w[g * nb * q6::BYTES..(g + 1) * nb * q6::BYTES];
        let a: [_; R] = self.acts.rows(i);
        // SAFETY (the block below): AVX2 + FMA + F16C at compile time (VNNI: the caller's
        // contract); every pointer is inside `group` (whole group-blocks) or inside an
        // activation row's super-block (`qa`: 4-byte reads at offsets ≤ 252; `bs`: 32 bytes).
        unsafe {
            let mut acc = [_mm256_setzero_ps(); R];
            let (m4, m30) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(0x30));
            for b in 0..nb {
                let p = group[b * q6::BYTES..(b + 1) * q6::BYTES].as_ptr();
                let d = _mm256_cvtph_ps(_mm_loadu_si128(p.add(q6::D).cast()));
                let sc = |t: usize| _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(q6::SC + 8 * t).cast()));
                let mut isum = [_mm256_setzero_si256(); R];
                let mut corr = [_mm256_setzero_si256(); R];
                // corr = Σ_t sc_t × bsum_t: lane l of `scp` is (sc[2u][l], sc[2u+1][l]) as i16.
                for u in 0..8 {
                    let v = _mm_loadu_si128(p.add(q6::SC + 16 * u).cast());
                    let scp = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(v, _mm_srli_si128::<8>(v)));
                    for r in 0..R {
                        let bs = a[r].extra[16 * b + 2 * u..16 * b + 2 * u + 2].as_ptr();
                        let w = _mm256_set1_epi32(std::ptr::read_unaligned(bs.cast()));
                        corr[r] = _mm256_add_epi32(corr[r], _mm256_madd_epi16(scp, w));
                    }
                }
                for h in 0..2 {
                    // Chunk 2h (half 0) reads qh bits 0-1 (low nibbles) and 4-5 (high); chunk
                    // 2h + 1 (half 1) bits 2-3 and 6-7. Values: chunk 2h + half's low nibbles
                    // are values 128h + 32 half + .., its high nibbles 128h + 64 + 32 half + ...
                    for part in 0..2 {
                        // [half][lo, hi] sums of sub-blocks (values 16 part .. of each group).
                        let mut s = [[[_mm256_setzero_si256(); 2]; 2]; R];
                        for k in 4 * part..4 * part + 4 {
                            let qh = _mm256_loadu_si256(p.add(q6::qh(h, k)).cast());
                            let ql0 = _mm256_loadu_si256(p.add(q6::ql(2 * h, k)).cast());
                            let ql1 =
                                _mm256_loadu_si256(p.add(q6::ql(2 * h + 1, k)).cast());
                            let codes = [
                                [
                                    _mm256_or_si256(
                                        _mm256_and_si256(ql0, m4),
                                        _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30),
                                    ),
                                    _mm256_or_si256(
                                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                                        _mm256_and_si256(qh, m30),
                                    ),
                                ],
                                [
                                    _mm256_or_si256(
                                        _mm256_and_si256(ql1, m4),
                                        _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30),
                                    ),
                                    _mm256_or_si256(
                                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                                        _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30),
                                    ),
                                ],
                            ];
                            for r in 0..R {
                                let qa = a[r].qs[QK_K * b..QK_K * (b + 1)].as_ptr();
                                for half in 0..2 {
                                    let g_lo = 128 * h + 32 * half;
                                    let at = [g_lo + 4 * k, g_lo + 64 + 4 * k];
                                    for x in 0..2 {
                                        let av = _mm256_set1_epi32(std::ptr::read_unaligned(
                                            qa.add(at[x]).cast(),
                                        ));
                                        s[r][half][x] = dot_small::<VNNI>(s[r][half][x], codes[half][x], av);
                                    }
                                }
                            }
                        }
                        for half in 0..2 {
                            let g_lo = 128 * h + 32 * half;
                            let scs = [sc(g_lo / 16 + part), sc((g_lo + 64) / 16 + part)];
                            for r in 0..R {
                                for x in 0..2 {
                                    isum[r] = _mm256_add_epi32(
                                        isum[r],
                                        _mm256_mullo_epi32(s[r][half][x], scs[x]),
                                    );
                                }
                            }
                        }
                    }
                }
                for r in 0..R {
                    let exact = _mm256_sub_epi32(isum[r], _mm256_slli_epi32::<5>(corr[r]));
                    let dd = _mm256_mul_ps(d, _mm256_set1_ps(a[r].d[b]));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(exact), dd, acc[r]);
                }
            }
            let mut out = [[0f32; 8]; R];
            for (o, a) in out.iter_mut().zip(&acc) {
                *o = lanes(*a);
            }
            out
        }
    }
}
