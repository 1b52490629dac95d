//! The CPU layout of `Q4_0`, `Q4_1`, `Q8_0`, `Q4_K`, `Q5_K` and `Q6_K`: weight rows in groups of [`GROUP`] (8),
//! block by block, interleaved so that one 32-byte word holds 4 consecutive codes of each of the 8
//! rows (bytes `4l..4l+4` = row `l`), and the group's 8 scales (and 8 minimums) are contiguous. A
//! kernel then computes 8 output features per register with no horizontal sums and one
//! conversion per 8 scales (`simdp`).
//!
//! What always holds: packing only moves bytes (flips the sign bit of `Q8_0` codes, making them
//! `q + 128`; spells out `Q4_K`'s 6-bit scales and minimums as bytes), the packed matrix has about
//! the size of ggml's rows (`Q4_K`: +2.8%, `Q5_K`: +2.3%; plus zero rows padding the last group), and
//! [`unpack_row`] gives back ggml's row bytes exactly.

use super::blocks::scales_k4;
use super::format::{WeightFormat, QK_K};
use rayon::prelude::*;

/// Weight rows per group.
pub(crate) const GROUP: usize = 8;

/// Where the pieces of one group-block (8 rows × one 32-value block) lie, in bytes.
#[derive(Clone, Copy)]
pub(crate) struct GroupBlock {
    /// The 8 scales `d` (f16).
    pub d: usize,
    /// The 8 minimums `m` (f16), for `Q4_1`.
    pub m: Option<usize>,
    /// The first code word; word `k` holds codes of every row.
    pub codes: usize,
    /// Code words: 4 for the 4-bit formats (low nibbles = values `4k..4k+4`, high nibbles =
    /// values `16+4k..16+4k+4`, as in ggml's `qs`), 8 for `Q8_0` (values `4k..4k+4`).
    pub words: usize,
    /// Size of the group-block.
    pub bytes: usize,
}

/// Whether `f` has a packed layout.
pub(crate) const fn packable(f: WeightFormat) -> bool {
    matches!(
        f,
        WeightFormat::Q4_0
            | WeightFormat::Q4_1
            | WeightFormat::Q8_0
            | WeightFormat::Q4_K
            | WeightFormat::Q5_K
            | WeightFormat::Q6_K
    )
}

/// The `Q4_K` group-block (8 rows × one 256-value super-block), byte offsets: `D` the 8 `d`
/// (f16), `DMIN` the 8 `dmin` (f16), `SC` and `MN` the 6-bit scales and minimums as bytes,
/// `[sub-block][row]`, `CODES` then, for each pair `j` of sub-blocks (0..4), 8 words: word `k`
/// lane `l` = row `l`'s `qs[32j + 4k..+4]` (low nibbles: sub-block `2j`, values `4k..4k+4`; high
/// nibbles: sub-block `2j + 1`). `Q5_K` adds `QH`: 8 words, word `k` lane `l` = row `l`'s
/// `qh[4k..+4]` (bit `2j` the fifth bit of sub-block `2j`'s values, bit `2j + 1` of `2j + 1`'s).
pub(crate) mod k4 {
    pub const D: usize = 0;
    pub const DMIN: usize = 16;
    pub const SC: usize = 32;
    pub const MN: usize = 96;
    pub const CODES: usize = 160;
    pub const BYTES: usize = 160 + 1024;
    pub const QH: usize = BYTES;
    pub const BYTES_Q5: usize = BYTES + 256;
}

/// The `Q6_K` group-block (8 rows × one 256-value super-block, the same size as ggml's), byte
/// offsets: `D` the 8 `d` (f16), `SC` the 16 scales per row as `[sub-block][row]` (i8), then from
/// `CODES`, for each half `h` of ggml's `qh` (0..2) and word `k` (0..8), 96 bytes in the order the
/// kernel reads them ([`q6::qh`], [`q6::ql`]): the `qh` word (lane `l` = row `l`'s `qh[32h + 4k..+4]`)
/// and the `ql` words of chunks `2h` and `2h + 1` (lane `l` = row `l`'s `ql[32c + 4k..+4]`). A
/// kernel then reads each group-block front to back, which the hardware prefetcher follows; with
/// the `ql` and `qh` words in two regions it read a `Q6_K` matrix larger than the cache at 15 GB/s.
pub(crate) mod q6 {
    pub const D: usize = 0;
    pub const SC: usize = 16;
    pub const CODES: usize = 144;
    pub const BYTES: usize = 144 + 1024 + 512;
    /// Offset of the `qh` word `k` of half `h`.
    pub const fn qh(h: usize, k: usize) -> usize {
        CODES + 96 * (8 * h + k)
    }
    /// Offset of the `ql` word `k` of chunk `c` (0..4).
    pub const fn ql(c: usize, k: usize) -> usize {
        qh(c / 2, k) + 32 + 32 * (c % 2)
    }
}

/// Bytes of one group-block of a packable format.
const fn group_bytes(f: WeightFormat) -> usize {
    match f {
        WeightFormat::Q4_K => k4::BYTES,
        WeightFormat::Q5_K => k4::BYTES_Q5,
        WeightFormat::Q6_K => q6::BYTES,
        _ => group_block(f).bytes,
    }
}

/// The group-block of a packable format.
pub(crate) const fn group_block(f: WeightFormat) -> GroupBlock {
    match f {
        WeightFormat::Q4_0 => GroupBlock {
            d: 0,
            m: None,
            codes: 16,
            words: 4,
            bytes: 16 + 128,
        },
        WeightFormat::Q4_1 => GroupBlock {
            d: 0,
            m: Some(16),
            codes: 32,
            words: 4,
            bytes: 32 + 128,
        },
        WeightFormat::Q8_0 => GroupBlock {
            d: 0,
            m: None,
            codes: 16,
            words: 8,
            bytes: 16 + 256,
        },
        _ => panic!("no packed layout for this format"),
    }
}

/// In ggml's block of a packable format: the offsets of `d`, of `m` (if any) and of the codes.
const fn plain_offsets(f: WeightFormat) -> (usize, Option<usize>, usize) {
    match f {
        WeightFormat::Q4_0 => (0, None, 2),
        WeightFormat::Q4_1 => (0, Some(2), 4),
        _ => (0, None, 2),
    }
}

/// The XOR applied to code bytes when packing (and undone when unpacking).
const fn code_xor(f: WeightFormat) -> u8 {
    match f {
        WeightFormat::Q8_0 => 0x80,
        _ => 0,
    }
}

/// Bytes of a packed matrix of `rows` rows of `cols` values.
pub(crate) fn packed_len(f: WeightFormat, rows: usize, cols: usize) -> usize {
    rows.div_ceil(GROUP) * (cols / f.block_len()) * group_bytes(f)
}

/// Visits every (ggml block byte range, packed byte range) pair of row `row`'s block `b`:
/// `(plain_at, packed_at, len, xor)`.
fn pieces(
    f: WeightFormat,
    cols: usize,
    row: usize,
    b: usize,
    mut visit: impl FnMut(usize, usize, usize, u8),
) {
    let (nb, gb, bb) = (cols / 32, group_block(f), f.block_bytes());
    let (g, l) = (row / GROUP, row % GROUP);
    let plain = row * nb * bb + b * bb;
    let packed = (g * nb + b) * gb.bytes;
    let (pd, pm, pq) = plain_offsets(f);
    visit(plain + pd, packed + gb.d + 2 * l, 2, 0);
    if let (Some(pm), Some(m)) = (pm, gb.m) {
        visit(plain + pm, packed + m + 2 * l, 2, 0);
    }
    for k in 0..gb.words {
        visit(
            plain + pq + 4 * k,
            packed + gb.codes + 32 * k + 4 * l,
            4,
            code_xor(f),
        );
    }
}

/// Packs ggml rows (`rows × row_bytes`) into `out` (`packed_len` bytes, zeroed), groups in
/// parallel.
pub(crate) fn pack(f: WeightFormat, rows: usize, cols: usize, plain: &[u8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), packed_len(f, rows, cols));
    let nb = cols / f.block_len();
    let per_group = nb * group_bytes(f);
    if per_group == 0 {
        return;
    }
    out.par_chunks_mut(per_group)
        .enumerate()
        .for_each(|(g, chunk)| {
            let base = g * per_group;
            for row in g * GROUP..(g * GROUP + GROUP).min(rows) {
                for b in 0..nb {
                    match f {
                        WeightFormat::Q4_K | WeightFormat::Q5_K => {
                            pack_k4(f, cols, row, b, plain, chunk, base)
                        }
                        WeightFormat::Q6_K => pack_q6(cols, row, b, plain, chunk, base),
                        _ => pieces(f, cols, row, b, |src, dst, len, xor| {
                            let (o, p) = (&mut chunk[dst - base..][..len], &plain[src..][..len]);
                            for (o, &v) in o.iter_mut().zip(p) {
                                *o = v ^ xor;
                            }
                        }),
                    }
                }
            }
        });
}

/// Writes ggml's bytes of row `row` (`row_bytes` long) from a packed matrix.
pub(crate) fn unpack_row(f: WeightFormat, cols: usize, packed: &[u8], row: usize, out: &mut [u8]) {
    let base = row * f.row_bytes(cols);
    for b in 0..cols / f.block_len() {
        match f {
            WeightFormat::Q4_K | WeightFormat::Q5_K => unpack_k4(f, cols, row, b, packed, out),
            WeightFormat::Q6_K => unpack_q6(cols, row, b, packed, out),
            _ => pieces(f, cols, row, b, |src, dst, len, xor| {
                for (o, &v) in out[src - base..src - base + len]
                    .iter_mut()
                    .zip(&packed[dst..dst + len])
                {
                    *o = v ^ xor;
                }
            }),
        }
    }
}

/// (ggml block start of row `row`'s super-block `b`, its group-block start, lane) for format `f`.
fn super_at(f: WeightFormat, cols: usize, row: usize, b: usize) -> (usize, usize, usize) {
    let nb = cols / QK_K;
    let bb = f.block_bytes();
    let (g, l) = (row / GROUP, row % GROUP);
    (row * nb * bb + b * bb, (g * nb + b) * group_bytes(f), l)
}

/// Where ggml's `Q4_K`/`Q5_K` block keeps `qs` and (`Q5_K`) `qh`.
fn k4_native(f: WeightFormat) -> (usize, Option<usize>) {
    match f {
        WeightFormat::Q5_K => (48, Some(16)),
        _ => (16, None),
    }
}

/// Packs row `row`'s `Q4_K`/`Q5_K` super-block `b` into `out`, which starts at byte `base`.
fn pack_k4(
    f: WeightFormat,
    cols: usize,
    row: usize,
    b: usize,
    plain: &[u8],
    out: &mut [u8],
    base: usize,
) {
    let (src, dst, l) = super_at(f, cols, row, b);
    let (blk, grp) = (
        &plain[src..src + f.block_bytes()],
        &mut out[dst - base..dst - base + group_bytes(f)],
    );
    grp[k4::D + 2 * l..k4::D + 2 * l + 2].copy_from_slice(&blk[0..2]);
    grp[k4::DMIN + 2 * l..k4::DMIN + 2 * l + 2].copy_from_slice(&blk[2..4]);
    let (sc, mn) = scales_k4(&blk[4..16]);
    for s in 0..8 {
        grp[k4::SC + 8 * s + l] = sc[s];
        grp[k4::MN + 8 * s + l] = mn[s];
    }
    let (qs, qh) = k4_native(f);
    for j in 0..4 {
        for k in 0..8 {
            let at = k4::CODES + 256 * j + 32 * k + 4 * l;
            grp[at..at + 4].copy_from_slice(&blk[qs + 32 * j + 4 * k..][..4]);
        }
    }
    if let Some(qh) = qh {
        for k in 0..8 {
            let at = k4::QH + 32 * k + 4 * l;
            grp[at..at + 4].copy_from_slice(&blk[qh + 4 * k..][..4]);
        }
    }
}

fn unpack_k4(f: WeightFormat, cols: usize, row: usize, b: usize, packed: &[u8], out: &mut [u8]) {
    let (src, dst, l) = super_at(f, cols, row, b);
    let base = row * f.row_bytes(cols);
    let (grp, blk) = (
        &packed[dst..dst + group_bytes(f)],
        &mut out[src - base..src - base + f.block_bytes()],
    );
    blk[0..2].copy_from_slice(&grp[k4::D + 2 * l..][..2]);
    blk[2..4].copy_from_slice(&grp[k4::DMIN + 2 * l..][..2]);
    let sc: [u8; 8] = std::array::from_fn(|s| grp[k4::SC + 8 * s + l]);
    let mn: [u8; 8] = std::array::from_fn(|s| grp[k4::MN + 8 * s + l]);
    // The inverse of ggml's `get_scale_min_k4` (96 bits hold exactly 16 six-bit values).
    let s = &mut blk[4..16];
    for j in 0..4 {
        s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
    }
    let (qs, qh) = k4_native(f);
    for j in 0..4 {
        for k in 0..8 {
            let at = k4::CODES + 256 * j + 32 * k + 4 * l;
            blk[qs + 32 * j + 4 * k..][..4].copy_from_slice(&grp[at..at + 4]);
        }
    }
    if let Some(qh) = qh {
        for k in 0..8 {
            let at = k4::QH + 32 * k + 4 * l;
            blk[qh + 4 * k..][..4].copy_from_slice(&grp[at..at + 4]);
        }
    }
}

/// Packs row `row`'s `Q6_K` super-block `b` into `out`, which starts at byte `base`.
fn pack_q6(cols: usize, row: usize, b: usize, plain: &[u8], out: &mut [u8], base: usize) {
    let (src, dst, l) = super_at(WeightFormat::Q6_K, cols, row, b);
    let (blk, grp) = (
        &plain[src..src + 210],
        &mut out[dst - base..dst - base + q6::BYTES],
    );
    for (from, to, len) in q6_moves(l) {
        grp[to..to + len].copy_from_slice(&blk[from..from + len]);
    }
}

fn unpack_q6(cols: usize, row: usize, b: usize, packed: &[u8], out: &mut [u8]) {
    let (src, dst, l) = super_at(WeightFormat::Q6_K, cols, row, b);
    let base = row * WeightFormat::Q6_K.row_bytes(cols);
    let (grp, blk) = (
        &packed[dst..dst + q6::BYTES],
        &mut out[src - base..src - base + 210],
    );
    for (from, to, len) in q6_moves(l) {
        blk[from..from + len].copy_from_slice(&grp[to..to + len]);
    }
}

/// Every (ggml offset, packed offset, length) of lane `l`'s bytes in a `Q6_K` super-block.
fn q6_moves(l: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let d = std::iter::once((208, q6::D + 2 * l, 2));
    let sc = (0..16).map(move |t| (192 + t, q6::SC + 8 * t + l, 1));
    let ql = (0..32).map(move |i| {
        let (c, k) = (i / 8, i % 8);
        (32 * c + 4 * k, q6::ql(c, k) + 4 * l, 4)
    });
    let qh = (0..16).map(move |i| {
        let (h, k) = (i / 8, i % 8);
        (128 + 32 * h + 4 * k, q6::qh(h, k) + 4 * l, 4)
    });
    d.chain(sc).chain(ql).chain(qh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn unpacking_gives_back_every_row_exactly() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for f in [
            WeightFormat::Q4_0,
            WeightFormat::Q4_1,
            WeightFormat::Q8_0,
            WeightFormat::Q4_K,
        ] {
            for (rows, cols) in [(1, 256), (8, 512), (13, 768), (17, 256)] {
                let rb = f.row_bytes(cols);
                let plain: Vec<u8> = (0..rows * rb).map(|_| rng.random()).collect();
                let mut packed = vec![0u8; packed_len(f, rows, cols)];
                pack(f, rows, cols, &plain, &mut packed);
                for row in 0..rows {
                    let mut back = vec![0u8; rb];
                    unpack_row(f, cols, &packed, row, &mut back);
                    assert_eq!(
                        back,
                        plain[row * rb..(row + 1) * rb],
                        "{f} {rows}x{cols} row {row}"
                    );
                }
            }
        }
    }
}
