//! The arithmetic shared by the compact LoRA pairs ([`super::HalfLora`], [`super::Int8Lora`]),
//! over any element that widens exactly to f32 ([`PanelElem`]): the shrink's dot in
//! [`DOT_LANES`] lanes with a fixed pairwise reduction, and the expand over `B` stored in panels
//! of [`PANEL`] output columns (`[out/PANEL][rank][PANEL]`), so a stretch of columns is one
//! contiguous run of panels.
//!
//! What always holds: these scalar functions are the reference; the AVX2 kernels
//! ([`super::lora_panels_x86`]) do each lane's operations in the same order and are
//! bit-identical to them. Every output element's operations depend only on its column, so
//! splitting columns across tasks (or a row being alone or batched) never changes a bit.

/// Output columns per panel of `B` (one 8-lane f32 vector).
pub const PANEL: usize = 8;

/// Lanes of the shrink's dot: four independent 8-wide FMA chains (one would wait on its own
/// latency).
pub const DOT_LANES: usize = 32;

/// An element of a compact LoRA pair: widens to f32 exactly.
pub trait PanelElem: Copy + Default + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// The 8 elements at `p`, widened as [`Self::to_f32`] does.
    ///
    /// # Safety
    /// `p` points at 8 readable elements.
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    unsafe fn widen8(p: *const Self) -> std::arch::x86_64::__m256;
}

/// bf16, as its bits.
impl PanelElem for u16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self as u32) << 16)
    }

    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    #[inline(always)]
    unsafe fn widen8(p: *const u16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's: 8 readable `u16` at `p`; AVX2 is a compile-time feature here.
        unsafe {
            let h = _mm_loadu_si128(p.cast());
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
    }
}

impl PanelElem for i8 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }

    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    #[inline(always)]
    unsafe fn widen8(p: *const i8) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's: 8 readable `i8` at `p`; AVX2 is a compile-time feature here.
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast()))) }
    }
}

/// The panels that an expand over columns `j0..j0 + len` reads (clamped to `bp`).
pub fn stretch<E>(bp: &[E], rank: usize, j0: usize, len: usize) -> &[E] {
    let from = (j0 / PANEL * PANEL * rank).min(bp.len());
    let to = ((j0 + len).div_ceil(PANEL) * PANEL * rank).clamp(from, bp.len());
    &bp[from..to]
}

/// Index of `B[j, r]` in the panel layout of a rank-`rank` pair.
#[inline(always)]
pub fn panel_at(rank: usize, j: usize, r: usize) -> usize {
    ((j / PANEL) * rank + r) * PANEL + j % PANEL
}

/// `b: [out, rank]` laid out in panels (the last panel's columns past `out` are zero).
pub fn to_panels<E: PanelElem>(b: &[E], rank: usize) -> Vec<E> {
    let out = b.len() / rank;
    let mut bp = vec![E::default(); out.div_ceil(PANEL) * rank * PANEL];
    for (j, row) in b.chunks_exact(rank).enumerate() {
        for (r, &v) in row.iter().enumerate() {
            bp[panel_at(rank, j, r)] = v;
        }
    }
    bp
}

/// `Σ x[i]·a[i]` in [`DOT_LANES`] lanes: the tail first (in order), the lanes' FMAs, then lanes
/// `i += i + 16`, `+ 8`, `+ 4`, `+ 2`, `+ 1`, then the tail added.
#[cfg_attr(target_feature = "avx2", allow(dead_code))] // the AVX2 dot's test oracle there
pub fn dot_scalar<E: PanelElem>(x: &[f32], a: &[E]) -> f32 {
    let (xc, ac) = (x.chunks_exact(DOT_LANES), a.chunks_exact(DOT_LANES));
    let mut tail = 0f32;
    for (&xv, &av) in xc.remainder().iter().zip(ac.remainder()) {
        tail = xv.mul_add(av.to_f32(), tail);
    }
    let mut acc = [0f32; DOT_LANES];
    for (xs, avs) in xc.zip(ac) {
        for i in 0..DOT_LANES {
            acc[i] = xs[i].mul_add(avs[i].to_f32(), acc[i]);
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

/// The dot of [`dot_scalar`], on AVX2 where the build has it.
#[inline]
pub fn dot<E: PanelElem>(x: &[f32], a: &[E]) -> f32 {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    // SAFETY: AVX2 + FMA are compile-time features of this build; lengths are asserted inside.
    unsafe {
        super::lora_panels_x86::dot(x, a)
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    dot_scalar(x, a)
}

/// The reference expand over columns `j0..j0 + y.len()` of panels `bp` (rank `s.len()`): per
/// column `acc = Σ_r s_r·B[j, r]` (one FMA per rank, in rank order, from 0), then
/// `y[j] = coeff·acc + y[j]` (one FMA).
pub fn expand_scalar<E: PanelElem>(bp: &[E], coeff: f32, s: &[f32], j0: usize, y: &mut [f32]) {
    let rank = s.len();
    for (j, o) in (j0..).zip(y.iter_mut()) {
        let mut acc = 0f32;
        for (r, &sr) in s.iter().enumerate() {
            acc = sr.mul_add(bp[panel_at(rank, j, r)].to_f32(), acc);
        }
        *o = coeff.mul_add(acc, *o);
    }
}

/// The expand of [`expand_scalar`], on AVX2 where the build has it. Panics unless the columns
/// lie within the panels.
#[inline]
pub fn expand<E: PanelElem>(bp: &[E], coeff: f32, s: &[f32], j0: usize, y: &mut [f32]) {
    assert!(
        (j0 + y.len()).div_ceil(PANEL) * PANEL * s.len() <= bp.len(),
        "expand: columns past the panels"
    );
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    // SAFETY: AVX2 + FMA are compile-time features of this build; the columns lie within `bp`'s
    // panels (asserted above).
    unsafe {
        super::lora_panels_x86::expand(bp, coeff, s, j0, y)
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    expand_scalar(bp, coeff, s, j0, y)
}
