//! Paged attention over a KV cache stored in 16-bit (or f32) elements, the fast CPU path. Work is
//! split into tasks of (sequence, KV head, tile of up to `TILE_ROWS` query rows): each cached K and
//! V row is converted to f32 once per task and serves every query head of its GQA group and every
//! row of the tile, so a prefill reads its prefix once per tile instead of once per row. What
//! always holds: a row's output is computed with exactly the same arithmetic whatever tile, batch
//! or thread it lands in (scores in position order, one max, exp-sum in order, V accumulated in
//! position order), so results are bit-identical alone or batched. The f32 `paged_attention` is
//! the oracle of the tests.

use super::AttnSeq;
use half::{bf16, f16};
use rayon::prelude::*;

/// Query rows of one sequence handled by one task.
const TILE_ROWS: usize = 16;

/// An element type of the KV cache.
pub trait KvElem: Copy + Default + Send + Sync + 'static {
    fn to_f32s(src: &[Self], dst: &mut [f32]);
    fn from_f32s(src: &[f32], dst: &mut [Self]);
    /// `n` zeros from zeroed allocation: pages are committed only when first written, so a large
    /// cache costs resident memory only as it fills.
    fn zeroed_vec(n: usize) -> Vec<Self>;
}

impl KvElem for f32 {
    fn zeroed_vec(n: usize) -> Vec<f32> {
        vec![0f32; n]
    }
    fn to_f32s(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn from_f32s(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl KvElem for f16 {
    fn zeroed_vec(n: usize) -> Vec<f16> {
        use half::vec::HalfBitsVecExt;
        vec![0u16; n].reinterpret_into()
    }
    fn to_f32s(src: &[f16], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
    fn from_f32s(src: &[f32], dst: &mut [f16]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }
}

impl KvElem for bf16 {
    fn zeroed_vec(n: usize) -> Vec<bf16> {
        use half::vec::HalfBitsVecExt;
        vec![0u16; n].reinterpret_into()
    }
    fn to_f32s(src: &[bf16], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
    fn from_f32s(src: &[f32], dst: &mut [bf16]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }
}

/// One layer's K and V storage, `[num_blocks, block_size, kv_heads, head_dim]`, read-only.
#[derive(Clone, Copy)]
pub struct KvView<'a, T> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub block_size: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Writes the new K/V rows (f32) into their cache slots, converting to `T`.
pub fn write_kv_as<T: KvElem>(
    k: &[f32],
    v: &[f32],
    slots: &[usize],
    stride: usize,
    cache_k: &mut [T],
    cache_v: &mut [T],
) {
    for (i, &slot) in slots.iter().enumerate() {
        T::from_f32s(
            &k[i * stride..(i + 1) * stride],
            &mut cache_k[slot * stride..(slot + 1) * stride],
        );
        T::from_f32s(
            &v[i * stride..(i + 1) * stride],
            &mut cache_v[slot * stride..(slot + 1) * stride],
        );
    }
}

/// One task: a tile of rows of one sequence and one KV head.
struct Task {
    seq: usize,
    kv_head: usize,
    /// Rows of the sequence (0-based within it) in this tile.
    first: usize,
    rows: usize,
}

/// `out[row, head]` = softmax(q·Kᵀ / sqrt(d)) · V over the row's causal context, like
/// `paged_attention`, with K/V read as `T`. `q` and `out` are `[rows, heads * head_dim]`.
pub fn paged_attention_grouped<T: KvElem>(
    q: &[f32],
    seqs: &[AttnSeq],
    kv: KvView<T>,
    heads: usize,
    out: &mut [f32],
) {
    let mut tasks = Vec::new();
    for (s, seq) in seqs.iter().enumerate() {
        for kv_head in 0..kv.kv_heads {
            for first in (0..seq.rows).step_by(TILE_ROWS) {
                let rows = TILE_ROWS.min(seq.rows - first);
                tasks.push(Task {
                    seq: s,
                    kv_head,
                    first,
                    rows,
                });
            }
        }
    }
    let hd = kv.head_dim;
    let group = heads / kv.kv_heads;
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|t| run_task(q, &seqs[t.seq], t, kv, heads))
        .collect();
    // Scatter: each task wrote `[rows, group, hd]` for its heads.
    for (t, r) in tasks.iter().zip(results) {
        let seq = &seqs[t.seq];
        for i in 0..t.rows {
            let row = seq.row_start + t.first + i;
            for g in 0..group {
                let h = t.kv_head * group + g;
                out[row * heads * hd + h * hd..][..hd]
                    .copy_from_slice(&r[(i * group + g) * hd..][..hd]);
            }
        }
    }
}

fn run_task<T: KvElem>(
    q: &[f32],
    seq: &AttnSeq,
    t: &Task,
    kv: KvView<T>,
    heads: usize,
) -> Vec<f32> {
    let hd = kv.head_dim;
    let group = heads / kv.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let stride = kv.kv_heads * hd;
    let first_pos = seq.context_len - seq.rows;
    // Position of each row of the tile; the tile's rows see positions 0..=last.
    let pos = |i: usize| first_pos + t.first + i;
    let last = pos(t.rows - 1);
    let slot_of =
        |p: usize| seq.block_table[p / kv.block_size] as usize * kv.block_size + p % kv.block_size;
    let qrow = |i: usize, g: usize| {
        let row = seq.row_start + t.first + i;
        &q[row * heads * hd + (t.kv_head * group + g) * hd..][..hd]
    };
    let lanes = t.rows * group;
    let n = last + 1;
    // scores[lane][p]
    let mut scores = vec![0f32; lanes * n];
    let mut buf = vec![0f32; hd];
    // The lanes (row, head) in order; row `i` sees position `p` once `p <= pos(i)`, i.e. the
    // lanes from row `p - pos(0)` on. Four lanes share each loaded chunk of the K row; every
    // score is still exactly `dot(q, k) * scale`.
    let qs: Vec<&[f32]> = (0..lanes).map(|l| qrow(l / group, l % group)).collect();
    // The K (and V) row `AHEAD` positions on is asked for before this one is read: rows are
    // `stride` apart within a block and blocks are scattered, a pattern the hardware
    // prefetcher does not follow.
    const AHEAD: usize = 8;
    let ahead = |m: &[T], p: usize| {
        if p + AHEAD < n {
            let at = slot_of(p + AHEAD) * stride + t.kv_head * hd;
            super::prefetch::prefetch(&m[at..at + hd]);
        }
    };
    for p in 0..n {
        ahead(kv.k, p);
        let base = slot_of(p) * stride + t.kv_head * hd;
        T::to_f32s(&kv.k[base..base + hd], &mut buf);
        let mut l = p.saturating_sub(pos(0)) * group;
        while l + 4 <= lanes {
            let d = super::linear::dot_rows([qs[l], qs[l + 1], qs[l + 2], qs[l + 3]], &buf);
            for (j, d) in d.into_iter().enumerate() {
                scores[(l + j) * n + p] = d * scale;
            }
            l += 4;
        }
        for l in l..lanes {
            scores[l * n + p] = super::dot(qs[l], &buf) * scale;
        }
    }
    // Softmax per lane over its own positions, in order.
    let mut inv = vec![0f32; lanes];
    for i in 0..t.rows {
        let len = pos(i) + 1;
        for g in 0..group {
            let lane = i * group + g;
            let sc = &mut scores[lane * n..lane * n + len];
            let max = sc.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for s in sc.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            inv[lane] = 1.0 / sum;
        }
    }
    let mut out = vec![0f32; lanes * hd];
    for p in 0..n {
        ahead(kv.v, p);
        let base = slot_of(p) * stride + t.kv_head * hd;
        T::to_f32s(&kv.v[base..base + hd], &mut buf);
        for i in 0..t.rows {
            if p > pos(i) {
                continue;
            }
            for g in 0..group {
                let lane = i * group + g;
                let w = scores[lane * n + p] * inv[lane];
                for (o, &v) in out[lane * hd..(lane + 1) * hd].iter_mut().zip(&buf) {
                    *o = w.mul_add(v, *o);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cpu::{paged_attention, write_kv, KvLayerView};
    use rand::{Rng, SeedableRng};

    fn setup(
        t: usize,
        heads: usize,
        kvh: usize,
        hd: usize,
        bs: usize,
        seed: u64,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<u32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut r =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let blocks = t.div_ceil(bs);
        // Scattered, non-monotonic block table.
        let table: Vec<u32> = (0..blocks as u32)
            .map(|b| (b * 7 + 3) % (blocks as u32 * 2 + 1))
            .collect();
        (r(t * heads * hd), r(t * kvh * hd), r(t * kvh * hd), table)
    }

    fn run<T: KvElem>(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        table: &[u32],
        seqs: &[AttnSeq],
        (t, heads, kvh, hd, bs): (usize, usize, usize, usize, usize),
    ) -> Vec<f32> {
        let stride = kvh * hd;
        let cap = (table.iter().max().unwrap() + 1) as usize * bs * stride;
        let (mut ck, mut cv) = (T::zeroed_vec(cap), T::zeroed_vec(cap));
        let slots: Vec<usize> = (0..t)
            .map(|p| table[p / bs] as usize * bs + p % bs)
            .collect();
        write_kv_as(k, v, &slots, stride, &mut ck, &mut cv);
        let view = KvView {
            k: &ck,
            v: &cv,
            block_size: bs,
            kv_heads: kvh,
            head_dim: hd,
        };
        let rows: usize = seqs.iter().map(|s| s.rows).sum();
        let mut out = vec![f32::NAN; rows * heads * hd];
        paged_attention_grouped(q, seqs, view, heads, &mut out);
        out
    }

    #[test]
    fn grouped_matches_the_f32_reference_and_is_tile_invariant() {
        let shape @ (t, heads, kvh, hd, bs) = (37, 6, 2, 16, 4);
        let (q, k, v, table) = setup(t, heads, kvh, hd, bs, 11);
        let full = [AttnSeq {
            row_start: 0,
            rows: t,
            context_len: t,
            block_table: &table,
        }];
        // Oracle: the f32 reference kernel.
        let stride = kvh * hd;
        let cap = (table.iter().max().unwrap() + 1) as usize * bs * stride;
        let (mut ck, mut cv) = (vec![0f32; cap], vec![0f32; cap]);
        let slots: Vec<usize> = (0..t)
            .map(|p| table[p / bs] as usize * bs + p % bs)
            .collect();
        write_kv(&k, &v, &slots, stride, &mut ck, &mut cv);
        let view = KvLayerView {
            k: &ck,
            v: &cv,
            block_size: bs,
            kv_heads: kvh,
            head_dim: hd,
        };
        let mut want = vec![0f32; t * heads * hd];
        paged_attention(&q, &full, view, heads, &mut want);
        let got32 = run::<f32>(&q, &k, &v, &table, &full, shape);
        for (a, b) in got32.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "f32 grouped {a} vs reference {b}");
        }
        let got16 = run::<f16>(&q, &k, &v, &table, &full, shape);
        for (a, b) in got16.iter().zip(&want) {
            assert!((a - b).abs() < 5e-3, "f16 grouped {a} vs reference {b}");
        }
        let gotb = run::<bf16>(&q, &k, &v, &table, &full, shape);
        for (a, b) in gotb.iter().zip(&want) {
            assert!((a - b).abs() < 3e-2, "bf16 grouped {a} vs reference {b}");
        }
        // Each row alone (decode of a cached context) gives the same bits as inside the tiles.
        for row in [0, 5, 15, 16, 17, 36] {
            let one = [AttnSeq {
                row_start: 0,
                rows: 1,
                context_len: row + 1,
                block_table: &table,
            }];
            let qrow = &q[row * heads * hd..(row + 1) * heads * hd];
            let alone = run::<f16>(qrow, &k, &v, &table, &one, shape);
            assert_eq!(
                alone,
                got16[row * heads * hd..(row + 1) * heads * hd],
                "row {row}"
            );
        }
        // A chunked prefill (rows 20..37 over a 20-token cached prefix) next to another sequence.
        let chunk = [
            AttnSeq {
                row_start: 0,
                rows: 3,
                context_len: 3,
                block_table: &table,
            },
            AttnSeq {
                row_start: 3,
                rows: t - 20,
                context_len: t,
                block_table: &table,
            },
        ];
        let mut qc = q[..3 * heads * hd].to_vec();
        qc.extend_from_slice(&q[20 * heads * hd..]);
        let got = run::<f16>(&qc, &k, &v, &table, &chunk, shape);
        assert_eq!(got[..3 * heads * hd], got16[..3 * heads * hd]);
        assert_eq!(got[3 * heads * hd..], got16[20 * heads * hd..]);
    }
}
