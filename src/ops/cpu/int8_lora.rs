//! int8 LoRA pairs: a quarter of the f32 pair's bytes (half of bf16's), what decode reads on the
//! quantized path by default. `A` is `[rank, in]` with one scale per rank row; `B` is in panels
//! of [`super::lora_panels::PANEL`] output columns like [`super::HalfLora`]'s, with one scale per
//! rank (a column of `B`), folded into the shrunk values once per expand. Symmetric rounding to
//! nearest, `q = round(v / d)`, `d = max|v| / 127`. The shrink and expand are `lora_panels`'
//! (bit-identical on every ISA, batch-invariant).

use super::lora_panels::{self, panel_at, to_panels};
use super::sgmv::LoraPair;

/// One projection's LoRA pair in int8.
#[derive(Debug, Clone)]
pub struct Int8Lora {
    /// `[rank, in]`.
    pub a: Vec<i8>,
    /// `A`'s scale per rank row.
    pub a_scale: Vec<f32>,
    /// `B` in panels ([`lora_panels::panel_at`]).
    pub bp: Vec<i8>,
    /// `B`'s scale per rank.
    pub b_scale: Vec<f32>,
    pub rank: usize,
    pub out_dim: usize,
}

/// `(q, d)` of symmetric int8 rounding of `vs` (all zero: `d = 0`).
fn quantize<'a>(vs: impl Iterator<Item = &'a f32> + Clone) -> (Vec<i8>, f32) {
    let amax = vs.clone().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    (vs.map(|v| (v * inv).round() as i8).collect(), d)
}

impl Int8Lora {
    /// Rounds an f32 pair `a: [rank, in]`, `b: [out, rank]`.
    pub fn from_f32(a: &[f32], b: &[f32], rank: usize) -> Self {
        let (k, out_dim) = (a.len() / rank, b.len() / rank);
        let (mut qa, mut a_scale) = (Vec::with_capacity(a.len()), Vec::with_capacity(rank));
        for row in a.chunks_exact(k) {
            let (q, d) = quantize(row.iter());
            qa.extend(q);
            a_scale.push(d);
        }
        let mut qb = vec![0i8; b.len()];
        let mut b_scale = Vec::with_capacity(rank);
        for r in 0..rank {
            let (q, d) = quantize(b.iter().skip(r).step_by(rank));
            for (j, v) in q.into_iter().enumerate() {
                qb[j * rank + r] = v;
            }
            b_scale.push(d);
        }
        Int8Lora {
            a: qa,
            a_scale,
            bp: to_panels(&qb, rank),
            b_scale,
            rank,
            out_dim,
        }
    }

    pub fn bytes(&self) -> usize {
        self.a.len() + self.bp.len() + 4 * (self.a_scale.len() + self.b_scale.len())
    }

    /// `B[j, r]`'s int8 value.
    pub fn b_at(&self, j: usize, r: usize) -> i8 {
        self.bp[panel_at(self.rank, j, r)]
    }
}

/// An [`Int8Lora`] with its coefficient (`scale * weight`) for one batch segment.
#[derive(Clone, Copy)]
pub struct Int8Term<'a> {
    pub lora: &'a Int8Lora,
    pub coeff: f32,
}

impl LoraPair for Int8Term<'_> {
    fn rank(&self) -> usize {
        self.lora.rank
    }

    /// `B`'s panels for the columns, and with `shrink` all of `A`.
    fn prefetch(&self, j0: usize, len: usize, shrink: bool) {
        super::prefetch::prefetch(lora_panels::stretch(&self.lora.bp, self.lora.rank, j0, len));
        if shrink {
            super::prefetch::prefetch(&self.lora.a);
        }
    }

    /// `out[r] = a_scale[r] · dot(x, A[r])`.
    fn shrink(&self, x: &[f32], out: &mut [f32]) {
        debug_assert_eq!(self.lora.a.len(), self.lora.rank * x.len());
        let rows = self.lora.a.chunks_exact(x.len());
        for ((o, ar), d) in out.iter_mut().zip(rows).zip(&self.lora.a_scale) {
            *o = d * lora_panels::dot(x, ar);
        }
    }

    /// The expand of `s[r] · b_scale[r]` (on the stack for ranks up to 64).
    fn expand(&self, s: &[f32], j0: usize, y: &mut [f32]) {
        debug_assert!(j0 + y.len() <= self.lora.out_dim);
        let mut stack = [0f32; 64];
        let heap: Vec<f32>;
        let scaled = s.iter().zip(&self.lora.b_scale).map(|(s, d)| s * d);
        let sd: &[f32] = match s.len() <= stack.len() {
            true => {
                for (o, v) in stack.iter_mut().zip(scaled) {
                    *o = v;
                }
                &stack[..s.len()]
            }
            false => {
                heap = scaled.collect();
                &heap
            }
        };
        lora_panels::expand(&self.lora.bp, self.coeff, sd, j0, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rounding is symmetric per rank row of `A` and per rank of `B`, within half a step of
    /// every value, and the pair's product is within the rounding bound of the f32 pair's.
    #[test]
    fn rounds_within_half_a_step_and_the_product_follows() {
        let (din, dout, rank) = (100, 37, 3);
        let f = |i: usize, s: usize| ((i * s % 97) as f32 - 48.0) / 61.0;
        let a: Vec<f32> = (0..rank * din).map(|i| f(i, 5)).collect();
        let b: Vec<f32> = (0..dout * rank).map(|i| f(i, 23) * 0.1).collect();
        let h = Int8Lora::from_f32(&a, &b, rank);
        for r in 0..rank {
            for i in 0..din {
                let got = h.a[r * din + i] as f32 * h.a_scale[r];
                assert!((got - a[r * din + i]).abs() <= h.a_scale[r] / 2.0 * 1.0001);
            }
            for j in 0..dout {
                let got = h.b_at(j, r) as f32 * h.b_scale[r];
                assert!((got - b[j * rank + r]).abs() <= h.b_scale[r] / 2.0 * 1.0001);
            }
        }
        let x: Vec<f32> = (0..din).map(|i| f(i, 17)).collect();
        let t = Int8Term {
            lora: &h,
            coeff: 0.5,
        };
        let mut s = vec![0f32; rank];
        t.shrink(&x, &mut s);
        let mut y = vec![0f32; dout];
        t.expand(&s, 0, &mut y);
        for j in 0..dout {
            let want: f32 = (0..rank)
                .map(|r| {
                    let sr: f32 = (0..din).map(|i| x[i] * a[r * din + i]).sum();
                    0.5 * sr * b[j * rank + r]
                })
                .sum();
            assert!(
                (y[j] - want).abs() <= 0.02 * (1.0 + want.abs()),
                "{j}: {} vs {want}",
                y[j]
            );
        }
    }
}
