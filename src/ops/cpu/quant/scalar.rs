//! The arithmetic every kernel performs, written once in plain Rust. For one output element
//! (weight row `w` · activation row `a`):
//! - 32-value formats (`Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`): per block the exact integer sum
//!   `isum` of the 32 products; one f32 accumulator, blocks in order:
//!   `acc = fma(isum as f32, d_w * d_a, acc)`; a second one for the minimum terms (`Q4_1`, `Q5_1`),
//!   `summ = fma(m_w, s_a, summ)`; result `acc + summ`. (Any split of the integer sum gives the same
//!   integer, which is what lets the packed kernels put 8 weight rows in the lanes of a register.)
//! - `Q4_K`, `Q5_K`: per super-block the exact integer `isum = Σ_s sc_s · Σ_{i in s} q_i a_i`
//!   and `imin = Σ_s mn_s · (bsum_2s + bsum_2s+1)`; `acc = fma(isum as f32, d_w * d_a, acc)`,
//!   `summ = fma(-(dmin_w * d_a), imin as f32, summ)`, blocks in order; result `acc + summ`.
//! - `Q6_K`: per super-block the exact integer `isum = Σ_t sc_t · Σ_{i in t} q_i a_i` over its 16
//!   sub-blocks of 16; `acc = fma(isum as f32, d_w * d_a, acc)`, blocks in order; result `acc`.
//!
//! Float weights use f32 activations and the recipe of `ops::cpu::dot` (8 FMA lanes over chunks
//! of 8, the same tree, then the tail in order), so F32 weights give exactly `ops::cpu::linear`.
//! The SIMD kernels compute exactly this (the tests compare bits), which is what makes a result
//! independent of the batch, the tile shape, the thread count, the weight layout and the
//! instruction set.

use super::acts::{Q8KRow, Q8Row};
use super::blocks::{decode32, decode_k, decode_q6k, dequantize, has_min};
use super::format::{WeightFormat, QK_K};

/// One element for a 32-value weight format (`Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`).
pub(crate) fn dot32(f: WeightFormat, w: &[u8], a: Q8Row) -> f32 {
    let (mut acc, mut summ) = (0f32, 0f32);
    for (b, wb) in w.chunks_exact(f.block_bytes()).enumerate() {
        let k = decode32(f, wb);
        let qa = &a.qs[32 * b..32 * b + 32];
        let isum: i32 = k.q.iter().zip(qa).map(|(&w, &a)| w as i32 * a as i32).sum();
        acc = (isum as f32).mul_add(k.d * a.d[b], acc);
        if has_min(f) {
            summ = k.m.mul_add(a.extra[b], summ);
        }
    }
    acc + summ
}

/// `Σ_s sc(s) · Σ_{i in s} q(i) · a[i]` over a super-block's sub-blocks of `len` values (exact).
fn scaled_sum(q: impl Fn(usize) -> i32, a: &[i8], sc: impl Fn(usize) -> i32, len: usize) -> i32 {
    (0..QK_K / len)
        .map(|s| {
            sc(s)
                * (len * s..len * (s + 1))
                    .map(|i| q(i) * a[i] as i32)
                    .sum::<i32>()
        })
        .sum()
}

/// One element for `Q4_K` or `Q5_K`.
pub(crate) fn dot_k(f: WeightFormat, w: &[u8], a: Q8KRow) -> f32 {
    let (mut acc, mut summ) = (0f32, 0f32);
    for (b, wb) in w.chunks_exact(f.block_bytes()).enumerate() {
        let k = decode_k(f, wb);
        let qa = &a.qs[QK_K * b..];
        let isum = scaled_sum(|i| k.q[i] as i32, qa, |s| k.sc[s] as i32, 32);
        acc = (isum as f32).mul_add(k.d * a.d[b], acc);
        let bs = &a.extra[16 * b..];
        let imin: i32 = (0..8)
            .map(|s| k.mn[s] as i32 * (bs[2 * s] as i32 + bs[2 * s + 1] as i32))
            .sum();
        summ = (-(k.dmin * a.d[b])).mul_add(imin as f32, summ);
    }
    acc + summ
}

/// One element for `Q6_K`.
pub(crate) fn dot_q6k(w: &[u8], a: Q8KRow) -> f32 {
    let mut acc = 0f32;
    for (b, wb) in w.chunks_exact(WeightFormat::Q6_K.block_bytes()).enumerate() {
        let k = decode_q6k(wb);
        let qa = &a.qs[QK_K * b..];
        let isum = scaled_sum(|i| k.q[i] as i32, qa, |t| k.sc[t] as i32, 16);
        acc = (isum as f32).mul_add(k.d * a.d[b], acc);
    }
    acc
}

/// One element for a float weight format: the row converted to f32, then `ops::cpu::dot`.
pub(crate) fn dot_float(f: WeightFormat, w: &[u8], x: &[f32]) -> f32 {
    let mut wf = vec![0f32; x.len()];
    dequantize(f, w, &mut wf);
    crate::ops::cpu::dot(x, &wf)
}
