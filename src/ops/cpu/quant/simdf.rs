//! AVX2 kernel for float weights (`F32`, `F16` via F16C, `BF16` by a 16-bit shift) against f32
//! activations: 8 FMA lanes over chunks of 8, the tree, then the tail in order — the recipe of
//! `ops::cpu::dot`, so `F32` weights give exactly `ops::cpu::linear`'s bits.

use super::format::WeightFormat;
use super::simd::hsum;
use super::tile::Tile;
use std::arch::x86_64::*;

/// The kernel for float weights of format `f`.
pub(crate) struct SimdFloat<'a> {
    pub f: WeightFormat,
    pub w: &'a [u8],
    pub x: &'a [f32],
    pub k: usize,
}

/// 8 weights starting at byte `at` of `w`, as f32.
#[inline(always)]
fn load8(f: WeightFormat, w: &[u8], at: usize) -> __m256 {
    // SAFETY: AVX2 + F16C at compile time; each arm reads exactly its 8 values' bytes, which the
    // slice indexing checks.
    unsafe {
        match f {
            WeightFormat::F32 => _mm256_loadu_ps(w[at..at + 32].as_ptr().cast()),
            WeightFormat::F16 => _mm256_cvtph_ps(_mm_loadu_si128(w[at..at + 16].as_ptr().cast())),
            _ => {
                let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(w[at..at + 16].as_ptr().cast()));
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
            }
        }
    }
}

impl Tile for SimdFloat<'_> {
    #[inline(always)]
    unsafe fn tile<const R: usize, const C: usize>(&self, i: usize, j: usize) -> [[f32; C]; R] {
        let (k, es) = (self.k, self.f.block_bytes());
        let mut w: [&[u8]; C] = [&[]; C];
        for (c, w) in w.iter_mut().enumerate() {
            *w = &self.w[(j + c) * k * es..][..k * es];
        }
        let mut x: [&[f32]; R] = [&[]; R];
        for (r, x) in x.iter_mut().enumerate() {
            *x = &self.x[(i + r) * k..][..k];
        }
        // SAFETY: AVX2 + FMA at compile time; loads are bounds-checked slices of 8 values.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); C]; R];
            for ch in 0..k / 8 {
                let mut wv = [_mm256_setzero_ps(); C];
                for (c, v) in wv.iter_mut().enumerate() {
                    *v = load8(self.f, w[c], 8 * ch * es);
                }
                for r in 0..R {
                    let xv = _mm256_loadu_ps(x[r][8 * ch..8 * ch + 8].as_ptr());
                    for c in 0..C {
                        acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
                    }
                }
            }
            let mut out = [[0f32; C]; R];
            for (r, o) in out.iter_mut().enumerate() {
                for (c, o) in o.iter_mut().enumerate() {
                    let mut s = hsum(acc[r][c]);
                    for t in k / 8 * 8..k {
                        let wt = super::blocks::dequantize_one(self.f, &w[c][t * es..]);
                        s = x[r][t].mul_add(wt, s);
                    }
                    *o = s;
                }
            }
            out
        }
    }
}
