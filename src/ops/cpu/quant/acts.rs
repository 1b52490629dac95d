//! Activations quantized once per `qlinear` call, row by row, to the 8-bit format the weight
//! format pairs with: [`Q8Acts`] (32-value blocks, ggml's Q8_0/Q8_1 with f32 scales) for the
//! 32-value weight formats, [`Q8KActs`] (256-value blocks, ggml's Q8_K) for the k-quants. A row's
//! quantization depends on that row only.

use super::format::QK_K;
use rayon::prelude::*;

/// Rows at or above which quantization is spread over threads.
const PAR_ROWS: usize = 16;

/// `m` rows of 32-value blocks: value `i` of block `b` is `d[b] * qs[32b + i]`; `s[b]` is
/// `d[b] * Σ qs` of the block (the Q8_1 sum that the `Q4_1`/`Q5_1` minimum multiplies).
pub(crate) struct Q8Acts {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    /// Blocks per row.
    pub nb: usize,
}

/// One row of [`Q8Acts`].
#[derive(Clone, Copy)]
pub(crate) struct Q8Row<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
}

/// `m` rows of 256-value blocks: value `i` of block `b` is `d[b] * qs[256b + i]`; `bsums[16b + g]`
/// is the sum of the 16 values `qs[256b + 16g ..][..16]`.
pub(crate) struct Q8KActs {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub bsums: Vec<i16>,
    pub nb: usize,
}

/// One row of [`Q8KActs`].
#[derive(Clone, Copy)]
pub(crate) struct Q8KRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub bsums: &'a [i16],
}

/// Quantizes one block like ggml's `quantize_row_q8_1` (scale `amax / 127`, round to nearest),
/// keeping the scale and the sum in f32.
fn q8_block(x: &[f32], q: &mut [i8]) -> (f32, f32) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
        sum += *q as i32;
    }
    (d, d * sum as f32)
}

/// Quantizes one super-block like ggml's `quantize_row_q8_K` (scale from the signed maximum).
fn q8k_block(x: &[f32], q: &mut [i8], bsums: &mut [i16]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        q.fill(0);
        bsums.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (iscale * v).round().clamp(-128.0, 127.0) as i8;
    }
    for (s, g) in bsums.iter_mut().zip(q.chunks_exact(16)) {
        *s = g.iter().map(|&v| v as i16).sum();
    }
    1.0 / iscale
}

impl Q8Acts {
    /// Quantizes `m` rows of `k` values (`k` a multiple of 32).
    pub fn quantize(x: &[f32], m: usize, k: usize) -> Self {
        let nb = k / 32;
        let mut qs = vec![0i8; m * k];
        let mut d = vec![0f32; m * nb];
        let mut s = vec![0f32; m * nb];
        let one_row = |((x, qs), (d, s)): ((&[f32], &mut [i8]), (&mut [f32], &mut [f32]))| {
            for (b, (x, q)) in x.chunks_exact(32).zip(qs.chunks_exact_mut(32)).enumerate() {
                (d[b], s[b]) = q8_block(x, q);
            }
        };
        let rows = x.chunks_exact(k).zip(qs.chunks_exact_mut(k));
        let scales = d.chunks_exact_mut(nb).zip(s.chunks_exact_mut(nb));
        if m >= PAR_ROWS {
            let rows = x.par_chunks_exact(k).zip(qs.par_chunks_exact_mut(k));
            let scales = d.par_chunks_exact_mut(nb).zip(s.par_chunks_exact_mut(nb));
            rows.zip(scales).for_each(one_row);
        } else {
            rows.zip(scales).for_each(one_row);
        }
        Self { qs, d, s, nb }
    }

    pub fn row(&self, i: usize) -> Q8Row<'_> {
        let nb = self.nb;
        Q8Row {
            qs: &self.qs[i * nb * 32..(i + 1) * nb * 32],
            d: &self.d[i * nb..(i + 1) * nb],
            s: &self.s[i * nb..(i + 1) * nb],
        }
    }
}

impl Q8KActs {
    /// Quantizes `m` rows of `k` values (`k` a multiple of 256).
    pub fn quantize(x: &[f32], m: usize, k: usize) -> Self {
        let nb = k / QK_K;
        let mut qs = vec![0i8; m * k];
        let mut d = vec![0f32; m * nb];
        let mut bsums = vec![0i16; m * nb * 16];
        let one_row = |((x, qs), (d, bs)): ((&[f32], &mut [i8]), (&mut [f32], &mut [i16]))| {
            let blocks = x.chunks_exact(QK_K).zip(qs.chunks_exact_mut(QK_K));
            for (b, ((x, q), bs)) in blocks.zip(bs.chunks_exact_mut(16)).enumerate() {
                d[b] = q8k_block(x, q, bs);
            }
        };
        let rows = x.chunks_exact(k).zip(qs.chunks_exact_mut(k));
        let scales = d.chunks_exact_mut(nb).zip(bsums.chunks_exact_mut(nb * 16));
        if m >= PAR_ROWS {
            let rows = x.par_chunks_exact(k).zip(qs.par_chunks_exact_mut(k));
            let scales = d.par_chunks_exact_mut(nb).zip(bsums.par_chunks_exact_mut(nb * 16));
            rows.zip(scales).for_each(one_row);
        } else {
            rows.zip(scales).for_each(one_row);
        }
        Self { qs, d, bsums, nb }
    }

    pub fn row(&self, i: usize) -> Q8KRow<'_> {
        let nb = self.nb;
        Q8KRow {
            qs: &self.qs[i * nb * QK_K..(i + 1) * nb * QK_K],
            d: &self.d[i * nb..(i + 1) * nb],
            bsums: &self.bsums[i * nb * 16..(i + 1) * nb * 16],
        }
    }
}

#[cfg(test)]
impl Q8Row<'_> {
    /// The values the quantized row stands for (`d * q`), for reference computations.
    pub fn dequantize(&self) -> Vec<f32> {
        let blocks = self.qs.chunks_exact(32).zip(self.d);
        blocks.flat_map(|(q, &d)| q.iter().map(move |&v| d * v as f32)).collect()
    }
}

#[cfg(test)]
impl Q8KRow<'_> {
    /// The values the quantized row stands for (`d * q`), for reference computations.
    pub fn dequantize(&self) -> Vec<f32> {
        let blocks = self.qs.chunks_exact(QK_K).zip(self.d);
        blocks.flat_map(|(q, &d)| q.iter().map(move |&v| d * v as f32)).collect()
    }
}
