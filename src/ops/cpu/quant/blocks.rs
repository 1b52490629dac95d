//! Scalar decoding of one ggml block into its integer values and float scales, in the element
//! order of the row (value `i` of the block is element `i`). Every other piece — dequantization,
//! the scalar kernels, the SIMD kernels' tests — reads blocks through these functions, so the byte
//! layout of each format is written down exactly once (ggml's `block_q4_0` ... `block_q6_K`).

use super::format::{WeightFormat, QK_K};
use half::{bf16, f16};

/// A 32-value block: value `i` is `d * q[i] + m` (`m` is 0 for the symmetric formats).
pub(crate) struct Block32 {
    pub q: [i8; 32],
    pub d: f32,
    pub m: f32,
}

/// A 256-value Q4_K/Q5_K super-block: value `i` is `d * sc[i / 32] * q[i] - dmin * mn[i / 32]`.
pub(crate) struct BlockK {
    pub q: [u8; QK_K],
    pub d: f32,
    pub dmin: f32,
    pub sc: [u8; 8],
    pub mn: [u8; 8],
}

/// A 256-value Q6_K super-block: value `i` is `d * sc[i / 16] * q[i]`, `q` in -32..=31.
pub(crate) struct BlockQ6K {
    pub q: [i8; QK_K],
    pub d: f32,
    pub sc: [i8; 16],
}

pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

pub(crate) fn bf16_at(b: &[u8], at: usize) -> f32 {
    bf16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

pub(crate) fn f32_at(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Whether the 32-value format has a per-block minimum (`Q4_1`, `Q5_1`).
pub(crate) const fn has_min(f: WeightFormat) -> bool {
    matches!(f, WeightFormat::Q4_1 | WeightFormat::Q5_1)
}

/// Decodes one block of a 32-value format (`Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`).
pub(crate) fn decode32(f: WeightFormat, b: &[u8]) -> Block32 {
    let mut q = [0i8; 32];
    let d = f16_at(b, 0);
    let (m, nibbles, high) = match f {
        WeightFormat::Q4_0 => (0.0, &b[2..18], None),
        WeightFormat::Q4_1 => (f16_at(b, 2), &b[4..20], None),
        WeightFormat::Q5_0 => (0.0, &b[6..22], Some(&b[2..6])),
        WeightFormat::Q5_1 => (f16_at(b, 2), &b[8..24], Some(&b[4..8])),
        WeightFormat::Q8_0 => {
            for (o, &v) in q.iter_mut().zip(&b[2..34]) {
                *o = v as i8;
            }
            return Block32 { q, d, m: 0.0 };
        }
        other => unreachable!("decode32 on {other}"),
    };
    let qh = high.map_or(0, |h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]));
    // Symmetric formats store q + 8 (4 bits) or q + 16 (5 bits).
    let offset = match (has_min(f), high.is_some()) {
        (true, _) => 0,
        (false, false) => 8,
        (false, true) => 16,
    };
    for (j, &byte) in nibbles.iter().enumerate() {
        let lo = (byte & 0xF) | (((qh >> j) & 1) << 4) as u8;
        let hi = (byte >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8;
        q[j] = (lo as i16 - offset) as i8;
        q[j + 16] = (hi as i16 - offset) as i8;
    }
    Block32 { q, d, m }
}

/// The 6-bit scales and mins of a Q4_K/Q5_K super-block (ggml's `get_scale_min_k4`).
#[inline(always)]
pub(crate) fn scales_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        if j < 4 {
            sc[j] = s[j] & 63;
            mn[j] = s[j + 4] & 63;
        } else {
            sc[j] = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
            mn[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
    (sc, mn)
}

/// Decodes a Q4_K (144 bytes) or Q5_K (176 bytes) super-block.
pub(crate) fn decode_k(f: WeightFormat, b: &[u8]) -> BlockK {
    let (sc, mn) = scales_k4(&b[4..16]);
    let (qh, qs) = match f {
        WeightFormat::Q4_K => (None, &b[16..144]),
        WeightFormat::Q5_K => (Some(&b[16..48]), &b[48..176]),
        other => unreachable!("decode_k on {other}"),
    };
    let mut q = [0u8; QK_K];
    for chunk in 0..4 {
        for l in 0..32 {
            let byte = qs[chunk * 32 + l];
            let h = qh.map_or(0, |h| h[l] >> (2 * chunk));
            q[chunk * 64 + l] = (byte & 0xF) | ((h & 1) << 4);
            q[chunk * 64 + 32 + l] = (byte >> 4) | (((h >> 1) & 1) << 4);
        }
    }
    BlockK {
        q,
        d: f16_at(b, 0),
        dmin: f16_at(b, 2),
        sc,
        mn,
    }
}

/// Decodes a Q6_K super-block (210 bytes: ql[128], qh[64], scales[16], d).
pub(crate) fn decode_q6k(b: &[u8]) -> BlockQ6K {
    let (ql, qh) = (&b[0..128], &b[128..192]);
    let mut q = [0i8; QK_K];
    for half in 0..2 {
        let (ql, qh) = (&ql[half * 64..], &qh[half * 32..]);
        let out = &mut q[half * 128..];
        for l in 0..32 {
            let h = qh[l];
            out[l] = ((ql[l] & 0xF) | ((h & 3) << 4)) as i8 - 32;
            out[l + 32] = ((ql[l + 32] & 0xF) | (((h >> 2) & 3) << 4)) as i8 - 32;
            out[l + 64] = ((ql[l] >> 4) | (((h >> 4) & 3) << 4)) as i8 - 32;
            out[l + 96] = ((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    BlockQ6K {
        q,
        d: f16_at(b, 208),
        sc: std::array::from_fn(|i| b[192 + i] as i8),
    }
}

/// Writes the values of one row (`row.len()` bytes, `out.len()` values) as f32.
pub(crate) fn dequantize(f: WeightFormat, row: &[u8], out: &mut [f32]) {
    let bb = f.block_bytes();
    let blocks = row
        .chunks_exact(bb)
        .zip(out.chunks_exact_mut(f.block_len()));
    match f {
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => {
            blocks.for_each(|(b, o)| o[0] = dequantize_one(f, b))
        }
        WeightFormat::Q4_K | WeightFormat::Q5_K => blocks.for_each(|(b, o)| {
            let k = decode_k(f, b);
            for (i, v) in o.iter_mut().enumerate() {
                let (d, m) = (k.d * k.sc[i / 32] as f32, k.dmin * k.mn[i / 32] as f32);
                *v = d * k.q[i] as f32 - m;
            }
        }),
        WeightFormat::Q6_K => blocks.for_each(|(b, o)| {
            let k = decode_q6k(b);
            for (i, v) in o.iter_mut().enumerate() {
                *v = k.d * k.sc[i / 16] as f32 * k.q[i] as f32;
            }
        }),
        _ => blocks.for_each(|(b, o)| {
            let k = decode32(f, b);
            for (v, &q) in o.iter_mut().zip(&k.q) {
                // No `+ 0.0` for the symmetric formats: it would turn -0.0 into +0.0.
                *v = if has_min(f) {
                    q as f32 * k.d + k.m
                } else {
                    q as f32 * k.d
                };
            }
        }),
    }
}

/// Value 0 of a float format's bytes `b`.
pub(crate) fn dequantize_one(f: WeightFormat, b: &[u8]) -> f32 {
    match f {
        WeightFormat::F32 => f32_at(b, 0),
        WeightFormat::F16 => f16_at(b, 0),
        WeightFormat::BF16 => bf16_at(b, 0),
        other => unreachable!("dequantize_one on {other}"),
    }
}
