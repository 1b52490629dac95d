//! bf16 LoRA pairs: `A` kept `[rank, in]`, `B` in panels of [`PANEL`] output columns (see
//! [`super::lora_panels`]), both bf16 — half the bytes of the f32 pair. Rounding is to nearest
//! even. The shrink and expand are `lora_panels`' (bit-identical on every ISA, batch-invariant).

use super::lora_panels::{self, panel_at, to_panels};
use super::sgmv::LoraPair;
use half::bf16;

/// One projection's LoRA pair in bf16.
#[derive(Debug, Clone)]
pub struct HalfLora {
    /// `[rank, in]`, bf16 bits.
    pub a: Vec<u16>,
    /// `B` in panels ([`lora_panels::panel_at`]), bf16 bits.
    pub bp: Vec<u16>,
    pub rank: usize,
    pub out_dim: usize,
}

impl HalfLora {
    /// Rounds (to nearest even) an f32 pair `a: [rank, in]`, `b: [out, rank]`.
    pub fn from_f32(a: &[f32], b: &[f32], rank: usize) -> Self {
        let round = |v: &f32| bf16::from_f32(*v).to_bits();
        HalfLora {
            a: a.iter().map(round).collect(),
            bp: to_panels(&b.iter().map(round).collect::<Vec<_>>(), rank),
            rank,
            out_dim: b.len() / rank,
        }
    }

    pub fn bytes(&self) -> usize {
        (self.a.len() + self.bp.len()) * 2
    }

    /// `B[j, r]` as bf16 bits.
    pub fn b_at(&self, j: usize, r: usize) -> u16 {
        self.bp[panel_at(self.rank, j, r)]
    }
}

/// A [`HalfLora`] with its coefficient (`scale * weight`) for one batch segment.
#[derive(Clone, Copy)]
pub struct HalfTerm<'a> {
    pub lora: &'a HalfLora,
    pub coeff: f32,
}

impl LoraPair for HalfTerm<'_> {
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

    fn shrink(&self, x: &[f32], out: &mut [f32]) {
        debug_assert_eq!(self.lora.a.len(), self.lora.rank * x.len());
        for (o, ar) in out.iter_mut().zip(self.lora.a.chunks_exact(x.len())) {
            *o = lora_panels::dot(x, ar);
        }
    }

    fn expand(&self, s: &[f32], j0: usize, y: &mut [f32]) {
        debug_assert!(j0 + y.len() <= self.lora.out_dim);
        lora_panels::expand(&self.lora.bp, self.coeff, s, j0, y)
    }
}

/// bf16 bits as f32 (tests).
#[cfg(test)]
fn widen(h: u16) -> f32 {
    super::lora_panels::PanelElem::to_f32(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cpu::sgmv::{sgmv, sgmv_pairs, LoraSegment, LoraTerm};

    fn f(i: usize, s: usize) -> f32 {
        ((i * s % 97) as f32 - 48.0) / 61.0
    }

    /// The bf16 pair against the f32 pair on the same (bf16-representable) values: equal to f32
    /// rounding, and a row alone on 4 threads (columns split) bit-identical to the batch on 1.
    #[test]
    fn half_pair_matches_f32_pair_and_is_batch_invariant() {
        let (rows, din, dout, rank) = (9, 100, 300, 16);
        let x: Vec<f32> = (0..rows * din).map(|i| f(i, 17)).collect();
        // Values exactly representable in bf16, so the only difference is summation order.
        let snap = |v: f32| bf16::from_f32(v).to_f32();
        let a: Vec<f32> = (0..rank * din).map(|i| snap(f(i, 5))).collect();
        let b: Vec<f32> = (0..dout * rank).map(|i| snap(f(i, 23))).collect();
        let h = HalfLora::from_f32(&a, &b, rank);
        let half = [HalfTerm {
            lora: &h,
            coeff: 0.75,
        }];
        let run = |threads: usize, rows_: std::ops::Range<usize>| {
            let mut y: Vec<f32> = (0..rows * dout).map(|i| f(i, 3)).collect();
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| sgmv_pairs(&x, din, &[(rows_, &half[..])], dout, &mut y));
            y
        };
        let mut want: Vec<f32> = (0..rows * dout).map(|i| f(i, 3)).collect();
        let term = LoraTerm {
            a: &a,
            b: &b,
            rank,
            coeff: 0.75,
        };
        let seg = LoraSegment {
            rows: 0..rows,
            terms: vec![term],
        };
        sgmv(&x, din, &[seg], dout, &mut want);
        let all = run(1, 0..rows);
        for (i, (g, w)) in all.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "elem {i}: {g} vs {w}"
            );
        }
        for r in 0..rows {
            let alone = run(4, r..r + 1);
            let (p, q) = (
                &all[r * dout..(r + 1) * dout],
                &alone[r * dout..(r + 1) * dout],
            );
            assert!(
                p.iter().zip(q).all(|(p, q)| p.to_bits() == q.to_bits()),
                "row {r}"
            );
        }
    }

    #[test]
    fn rounding_is_to_nearest_and_transposes_b() {
        let a = [1.0f32, 1.00390625, -3.5];
        let b = [0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6]; // [out=3, rank=2]
        let h = HalfLora::from_f32(&a, &b, 2);
        assert_eq!(h.out_dim, 3);
        assert_eq!(widen(h.a[0]), 1.0);
        assert_eq!(widen(h.a[1]), 1.0); // 1 + 2^-8 is halfway: ties to even
        assert_eq!(widen(h.a[2]), -3.5);
        for j in 0..3 {
            for r in 0..2 {
                let got = widen(h.b_at(j, r));
                assert!((got - b[j * 2 + r]).abs() <= b[j * 2 + r].abs() / 256.0);
            }
        }
    }
}
