//! Activations quantized once per `qlinear` call, row by row, to the 8-bit format the weight
//! format pairs with: [`Q8Acts`] (32-value blocks, ggml's Q8_0/Q8_1 with f32 scales) for the
//! 32-value weight formats, [`Q8KActs`] (256-value blocks, ggml's Q8_K) for the k-quants. A row's
//! quantization depends on that row only, and its values never exceed 127 in magnitude.

use super::format::QK_K;
use rayon::prelude::*;

/// Rows at or above which quantization is spread over threads.
const PAR_ROWS: usize = 16;

/// `m` rows of blocks of `bl` values: value `i` of block `b` is `d[b] * qs[bl * b + i]`, and each
/// block has `ne` extra values in `extra[ne * b..]` (Q8: the sum `d * Σ qs`; Q8_K: the 16 sums of
/// each 16 consecutive `qs`).
pub(crate) struct QActs<E> {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub extra: Vec<E>,
    /// The exact integer sum of each block's `qs` (the packed kernels' offset correction).
    pub qsum: Vec<i32>,
    /// 8-bit planes per input row (1, or 2: rows `2i`, `2i + 1` are input row `i`).
    pub planes: usize,
    /// Values per block, extras per block, blocks per row.
    bl: usize,
    ne: usize,
    pub nb: usize,
}

/// 32-value blocks with `extra` = `d * Σ qs` (ggml's Q8_1 with f32 scale and sum; also Q8_0).
pub(crate) type Q8Acts = QActs<f32>;
/// 256-value blocks with `extra` = 16 sums of 16 values (ggml's Q8_K).
pub(crate) type Q8KActs = QActs<i16>;

/// One row of [`QActs`].
#[derive(Clone, Copy)]
pub(crate) struct QRow<'a, E> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub extra: &'a [E],
    /// As [`QActs::qsum`].
    pub qsum: &'a [i32],
}

/// One plane of one row: codes, scales, extras and code sums.
type PlaneParts<'a, E> = (((&'a mut [i8], &'a mut [f32]), &'a mut [E]), &'a mut [i32]);
/// One input row and the planes it is quantized into.
type RowParts<'a, E> = (&'a [f32], PlaneParts<'a, E>);

pub(crate) type Q8Row<'a> = QRow<'a, f32>;
pub(crate) type Q8KRow<'a> = QRow<'a, i16>;

/// `v.round()` (to nearest, halves away from zero), bit for bit, without the libm call that
/// `f32::round` becomes on x86-64 (no rounding mode of the hardware's rounds halves away):
/// `trunc` is one instruction, `v - trunc(v)` is exact, and a loop of these vectorizes.
#[inline(always)]
fn round_away(v: f32) -> f32 {
    let t = v.trunc();
    match (v - t).abs() >= 0.5 {
        true => t + 1f32.copysign(v),
        false => t,
    }
}

/// `max |x_i|` (0 for an empty slice; NaNs ignored, as `f32::max` does). A maximum does not round,
/// so eight independent lanes give the bits of the sequential fold, which waited on one `maxss`
/// chain per value.
#[inline(always)]
fn amax(x: &[f32]) -> f32 {
    let mut m = [0f32; 8];
    let chunks = x.chunks_exact(8);
    for &v in chunks.remainder() {
        m[0] = m[0].max(v.abs());
    }
    for c in chunks {
        for (m, v) in m.iter_mut().zip(c) {
            *m = m.max(v.abs());
        }
    }
    m.iter().fold(0f32, |a, &b| a.max(b))
}

/// Quantizes one block like ggml's `quantize_row_q8_1` (scale `amax / 127`, round to nearest),
/// keeping the scale and the sum in f32; returns the scale and the integer sum of `q`. The
/// reference: builds without AVX2 run it, and `acts_x86::q8_block32` is tested against it.
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        not(test)
    ),
    allow(dead_code)
)]
fn q8_block(x: &[f32], q: &mut [i8], sum: &mut [f32]) -> (f32, i32) {
    let amax = amax(x);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut total = 0i32;
    for (q, &v) in q.iter_mut().zip(x) {
        *q = round_away(v * id) as i8;
        total += *q as i32;
    }
    sum[0] = d * total as f32;
    (d, total)
}

/// Quantizes one super-block like ggml's `quantize_row_q8_K` (scale from the signed maximum);
/// returns the scale and the integer sum of `q`.
fn q8k_block(x: &[f32], q: &mut [i8], bsums: &mut [i16]) -> (f32, i32) {
    // The first value of the largest magnitude, as a sequential `if amax < |v|` scan keeps it.
    let amax = amax(x);
    let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0);
    if amax == 0.0 {
        q.fill(0);
        bsums.fill(0);
        return (0.0, 0);
    }
    let iscale = -127.0 / max;
    for (q, &v) in q.iter_mut().zip(x) {
        *q = round_away(iscale * v).clamp(-128.0, 127.0) as i8;
    }
    for (s, g) in bsums.iter_mut().zip(q.chunks_exact(16)) {
        *s = g.iter().map(|&v| v as i16).sum();
    }
    (1.0 / iscale, bsums.iter().map(|&s| s as i32).sum())
}

impl<E: Copy + Default + Send + Sync> QActs<E> {
    /// Quantizes `m` rows of `k` values (`k` a multiple of `bl`) into `planes` 8-bit planes each,
    /// block by block with `block`, which fills the block's `qs` and extras and returns its scale
    /// and the sum of its `qs`.
    fn build(
        x: &[f32],
        (m, k): (usize, usize),
        (bl, ne, planes): (usize, usize, usize),
        block: impl Fn(&[f32], &mut [i8], &mut [E]) -> (f32, i32) + Sync,
    ) -> Self {
        let nb = k / bl;
        let rows = m * planes;
        let (mut qs, mut d) = (vec![0i8; rows * k], vec![0f32; rows * nb]);
        let (mut extra, mut qsum) = (vec![E::default(); rows * nb * ne], vec![0i32; rows * nb]);
        // Block by block: the first plane's codes, then (two planes) the codes of what they
        // left, `x - d·q`, from a buffer on the stack.
        let one_row = |(x, (((qs, d), extra), qsum)): RowParts<'_, E>| {
            let (qh, ql) = qs.split_at_mut(k);
            let (dh, dl) = d.split_at_mut(nb);
            let (eh, el) = extra.split_at_mut(nb * ne);
            let (sh, sl) = qsum.split_at_mut(nb);
            let mut rest = [0f32; QK_K];
            for b in 0..nb {
                let (xb, qb) = (&x[b * bl..(b + 1) * bl], &mut qh[b * bl..(b + 1) * bl]);
                (dh[b], sh[b]) = block(xb, qb, &mut eh[b * ne..(b + 1) * ne]);
                if planes == 2 {
                    let r = &mut rest[..bl];
                    for ((r, &x), &q) in r.iter_mut().zip(xb).zip(qb.iter()) {
                        *r = x - dh[b] * q as f32;
                    }
                    let ql = &mut ql[b * bl..(b + 1) * bl];
                    (dl[b], sl[b]) = block(r, ql, &mut el[b * ne..(b + 1) * ne]);
                }
            }
        };
        let (rk, rb) = (planes * k, planes * nb);
        if m >= PAR_ROWS {
            let outs = qs.par_chunks_exact_mut(rk).zip(d.par_chunks_exact_mut(rb));
            let outs = outs.zip(extra.par_chunks_exact_mut(rb * ne));
            let outs = outs.zip(qsum.par_chunks_exact_mut(rb));
            x.par_chunks_exact(k).zip(outs).for_each(one_row);
        } else {
            let outs = qs.chunks_exact_mut(rk).zip(d.chunks_exact_mut(rb));
            let outs = outs.zip(extra.chunks_exact_mut(rb * ne));
            let outs = outs.zip(qsum.chunks_exact_mut(rb));
            x.chunks_exact(k).zip(outs).for_each(one_row);
        }
        Self {
            qs,
            d,
            extra,
            qsum,
            planes,
            bl,
            ne,
            nb,
        }
    }

    #[inline(always)]
    pub fn row(&self, i: usize) -> QRow<'_, E> {
        let (nb, bl, ne) = (self.nb, self.bl, self.ne);
        QRow {
            qs: &self.qs[i * nb * bl..(i + 1) * nb * bl],
            d: &self.d[i * nb..(i + 1) * nb],
            extra: &self.extra[i * nb * ne..(i + 1) * nb * ne],
            qsum: &self.qsum[i * nb..(i + 1) * nb],
        }
    }

    /// Rows `i..i + R` (`R >= 1`). A plain loop, not `array::from_fn`: that is not inlined into
    /// the kernels' target-feature functions, and the call cost a few percent of decode.
    #[inline(always)]
    pub fn rows<const R: usize>(&self, i: usize) -> [QRow<'_, E>; R] {
        let mut a = [self.row(i); R];
        for (r, a) in a.iter_mut().enumerate().skip(1) {
            *a = self.row(i + r);
        }
        a
    }
}

impl Q8Acts {
    /// Quantizes `m` rows of `k` values (`k` a multiple of 32) into `planes` planes.
    pub fn quantize(x: &[f32], m: usize, k: usize, planes: usize) -> Self {
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ))]
        let block = super::acts_x86::q8_block32;
        #[cfg(not(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        )))]
        let block = q8_block;
        Self::build(x, (m, k), (32, 1, planes), block)
    }
}

impl Q8KActs {
    /// Quantizes `m` rows of `k` values (`k` a multiple of 256) into `planes` planes.
    pub fn quantize(x: &[f32], m: usize, k: usize, planes: usize) -> Self {
        Self::build(x, (m, k), (QK_K, 16, planes), q8k_block)
    }
}

#[cfg(test)]
impl<E> QRow<'_, E> {
    /// The values the quantized row stands for (`d * q`), for reference computations.
    pub fn dequantize(&self) -> Vec<f32> {
        let bl = self.qs.len() / self.d.len();
        let blocks = self.qs.chunks_exact(bl).zip(self.d);
        blocks
            .flat_map(|(q, &d)| q.iter().map(move |&v| d * v as f32))
            .collect()
    }
}

#[cfg(test)]
mod round_tests {
    use super::round_away;

    /// The AVX2 block equals the scalar reference bit for bit: codes, scale, integer sum and the
    /// scaled sum, on random blocks of every magnitude, ties, zeros, NaNs and infinities.
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    #[test]
    fn the_avx2_block_is_q8_block_bit_for_bit() {
        let mut s = 0x2545f491u32;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        };
        for case in 0..40_000 {
            let scale = [1e-30f32, 1e-3, 1.0, 127.0, 3e4, 1e30][case % 6];
            let mut x: Vec<f32> = (0..32)
                .map(|_| (next() as f32 / u32::MAX as f32 - 0.5) * scale)
                .collect();
            match case % 9 {
                0 => x[next() as usize % 32] = f32::NAN,
                1 => x[next() as usize % 32] = f32::INFINITY,
                2 => x.iter_mut().for_each(|v| *v = 0.0),
                3 => x
                    .iter_mut()
                    .for_each(|v| *v = (*v * 8.0).round() / 8.0 * 127.0 / scale),
                4 => x.iter_mut().for_each(|v| *v = f32::NAN),
                5 => x[3] = -0.0,
                _ => {}
            }
            let (mut qa, mut qb) = ([0i8; 32], [0i8; 32]);
            let (mut sa, mut sb) = ([0f32], [0f32]);
            let a = super::q8_block(&x, &mut qa, &mut sa);
            let b = super::super::acts_x86::q8_block32(&x, &mut qb, &mut sb);
            assert_eq!(qa, qb, "{x:?}");
            assert_eq!(a.0.to_bits(), b.0.to_bits(), "{x:?}");
            assert_eq!(a.1, b.1, "{x:?}");
            assert!(sa[0].to_bits() == sb[0].to_bits() || sa[0].is_nan() && sb[0].is_nan());
        }
    }

    /// Equal to `f32::round` on ties, near-ties, large, tiny, signed zeros, infinities and NaN.
    /// The lanes' maximum is the sequential fold's, NaNs and signed zeros included.
    #[test]
    fn amax_is_the_sequential_fold() {
        let mut s = 0x1234567u32;
        for len in [0usize, 1, 7, 8, 9, 32, 33, 256] {
            for _ in 0..200 {
                let x: Vec<f32> = (0..len)
                    .map(|_| {
                        s ^= s << 13;
                        s ^= s >> 17;
                        s ^= s << 5;
                        match s % 7 {
                            0 => f32::NAN,
                            1 => -0.0,
                            _ => (s as f32 / u32::MAX as f32 - 0.5) * 10.0,
                        }
                    })
                    .collect();
                let want = x.iter().fold(0f32, |a, v| a.max(v.abs()));
                assert_eq!(super::amax(&x).to_bits(), want.to_bits(), "{x:?}");
            }
        }
    }

    #[test]
    fn round_away_is_f32_round_bit_for_bit() {
        let mut vs = vec![
            0.0f32, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -127.5, 1e-40,
        ];
        vs.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            8388607.5,
            8388608.0,
            1e30,
            -1e30,
        ]);
        vs.extend([0.49999997, -0.49999997, 0.50000006, f32::MIN_POSITIVE]);
        let mut s = 0x9e3779b9u32;
        for _ in 0..100_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            vs.push(f32::from_bits(s));
            vs.push((s as f32 / u32::MAX as f32 - 0.5) * 300.0);
        }
        for v in vs {
            let (a, b) = (round_away(v), v.round());
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{v:e}: {a} vs {b}"
            );
        }
    }
}
