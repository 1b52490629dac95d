//! Paged attention (the CPU twin of `kernels/paged_attention.cu`). The KV cache of one layer is
//! `[num_blocks, block_size, kv_heads, head_dim]`; a sequence's token at position `p` lives in
//! block `block_table[p / block_size]`, offset `p % block_size`. Queries of a sequence attend
//! causally to every cached position up to their own, for prefill and decode alike.

use rayon::prelude::*;

/// One layer's K and V storage, read-only.
#[derive(Clone, Copy)]
pub struct KvLayerView<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub block_size: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// One sequence's slice of the flattened batch.
#[derive(Clone, Copy, Debug)]
pub struct AttnSeq<'a> {
    /// First row of this sequence in the batch.
    pub row_start: usize,
    /// Number of query rows (new tokens) of this sequence in the batch.
    pub rows: usize,
    /// Tokens in the cache after this step (previous context + the new rows).
    pub context_len: usize,
    pub block_table: &'a [u32],
}

/// Writes the new K/V rows into their cache slots. `slots[i]` is `block * block_size + offset`.
pub fn write_kv(
    k: &[f32],
    v: &[f32],
    slots: &[usize],
    stride: usize,
    cache_k: &mut [f32],
    cache_v: &mut [f32],
) {
    for (i, &slot) in slots.iter().enumerate() {
        cache_k[slot * stride..(slot + 1) * stride]
            .copy_from_slice(&k[i * stride..(i + 1) * stride]);
        cache_v[slot * stride..(slot + 1) * stride]
            .copy_from_slice(&v[i * stride..(i + 1) * stride]);
    }
}

/// `out[row, head]` = softmax(q·Kᵀ / sqrt(d)) · V over the row's causal context.
/// `q` and `out` are `[rows, heads * head_dim]`.
pub fn paged_attention(
    q: &[f32],
    seqs: &[AttnSeq],
    kv: KvLayerView,
    heads: usize,
    out: &mut [f32],
) {
    let hd = kv.head_dim;
    let group = heads / kv.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let stride = kv.kv_heads * hd;
    // (sequence, position) of every row.
    let mut row_info = Vec::with_capacity(out.len() / (heads * hd));
    for (s, seq) in seqs.iter().enumerate() {
        let first_pos = seq.context_len - seq.rows;
        for r in 0..seq.rows {
            row_info.push((s, first_pos + r));
        }
    }
    out.par_chunks_mut(hd).enumerate().for_each_init(
        Vec::new,
        |scores: &mut Vec<f32>, (idx, o)| {
            let (row, head) = (idx / heads, idx % heads);
            let (s, pos) = row_info[row];
            let seq = &seqs[s];
            let qh = &q[(seq.row_start + (row - seq.row_start)) * heads * hd + head * hd..][..hd];
            let kvh = head / group;
            let slot_of = |p: usize| {
                seq.block_table[p / kv.block_size] as usize * kv.block_size + p % kv.block_size
            };
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for p in 0..=pos {
                let base = slot_of(p) * stride + kvh * hd;
                let sc = super::dot(qh, &kv.k[base..base + hd]) * scale;
                max = max.max(sc);
                scores.push(sc);
            }
            let mut sum = 0.0;
            for sc in scores.iter_mut() {
                *sc = (*sc - max).exp();
                sum += *sc;
            }
            let inv = 1.0 / sum;
            o.fill(0.0);
            for (p, &w) in scores.iter().enumerate() {
                let base = slot_of(p) * stride + kvh * hd;
                let w = w * inv;
                for (ov, &vv) in o.iter_mut().zip(&kv.v[base..base + hd]) {
                    *ov = w.mul_add(vv, *ov);
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Contiguous-attention reference in f64, for a single sequence.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        t: usize,
        heads: usize,
        kvh: usize,
        hd: usize,
    ) -> Vec<f64> {
        let mut out = vec![0f64; t * heads * hd];
        for i in 0..t {
            for h in 0..heads {
                let g = h / (heads / kvh);
                let qv = &q[i * heads * hd + h * hd..][..hd];
                let sc: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..hd)
                            .map(|d| qv[d] as f64 * k[j * kvh * hd + g * hd + d] as f64)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for j in 0..=i {
                    for d in 0..hd {
                        out[i * heads * hd + h * hd + d] +=
                            e[j] / z * v[j * kvh * hd + g * hd + d] as f64;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn paged_matches_contiguous_reference_with_scattered_blocks() {
        let (t, heads, kvh, hd, bs) = (11, 4, 2, 8, 4);
        let f = |i: usize, s: usize| ((i * s % 113) as f32 - 56.0) / 40.0;
        let q: Vec<f32> = (0..t * heads * hd).map(|i| f(i, 31)).collect();
        let k: Vec<f32> = (0..t * kvh * hd).map(|i| f(i, 17)).collect();
        let v: Vec<f32> = (0..t * kvh * hd).map(|i| f(i, 23)).collect();
        let table = [5u32, 1, 7];
        let stride = kvh * hd;
        let mut ck = vec![f32::NAN; 8 * bs * stride];
        let mut cv = vec![f32::NAN; 8 * bs * stride];
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
        let mut out = vec![f32::NAN; t * heads * hd];
        let seq = AttnSeq {
            row_start: 0,
            rows: t,
            context_len: t,
            block_table: &table,
        };
        paged_attention(&q, &[seq], view, heads, &mut out);
        let r = reference(&q, &k, &v, t, heads, kvh, hd);
        for (a, b) in out.iter().zip(&r) {
            assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
        }
        // Decode of the last row alone (context already cached) gives the same bits.
        let mut last = vec![f32::NAN; heads * hd];
        let seq = AttnSeq {
            row_start: 0,
            rows: 1,
            context_len: t,
            block_table: &table,
        };
        paged_attention(&q[(t - 1) * heads * hd..], &[seq], view, heads, &mut last);
        assert_eq!(last, out[(t - 1) * heads * hd..].to_vec());
    }
}
