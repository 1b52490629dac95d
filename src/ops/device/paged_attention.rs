//! Paged attention as a candle custom op: queries `[rows, heads * head_dim]` (f32) of a flattened
//! batch attend causally, each sequence through its block table, over one layer's cache
//! `[2, slots, kv_heads, head_dim]` (K then V) — decode rows and varlen prefill rows in one call.
//! The sequences come from the step's index upload in the encoding `encode_attn_index` writes.
//! `cpu_fwd` is `ops::cpu::paged_attention` (f32 cache, the exact path) or
//! `paged_attention_grouped` (f16/bf16 cache), exactly as the CPU executor calls them.

use super::storage::slice;
use crate::ops::cpu::{
    paged_attention, paged_attention_grouped, AttnSeq, KvElem, KvLayerView, KvView,
};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// Appends one sequence to an attention index: `row_start, rows, context_len, n_blocks, blocks…`.
pub fn encode_attn_index(
    out: &mut Vec<u32>,
    row_start: usize,
    rows: usize,
    context_len: usize,
    blocks: &[u32],
) {
    out.extend([row_start, rows, context_len, blocks.len()].map(|x| x as u32));
    out.extend_from_slice(blocks);
}

/// The sequences of an attention index, checked against the batch and the cache.
fn decode(
    idx: &[u32],
    batch_rows: usize,
    block_size: usize,
    cache_blocks: usize,
) -> Result<Vec<AttnSeq<'_>>> {
    let mut seqs = Vec::new();
    let mut i = 0;
    while i < idx.len() {
        let Some(h) = idx.get(i..i + 4) else {
            bail!("paged_attention: truncated index at {i}")
        };
        let [row_start, rows, context_len, n] = [h[0], h[1], h[2], h[3]].map(|x| x as usize);
        let Some(table) = idx.get(i + 4..i + 4 + n) else {
            bail!("paged_attention: truncated block table at {i}")
        };
        if row_start + rows > batch_rows || rows > context_len || context_len > n * block_size {
            bail!("paged_attention: sequence rows {row_start}+{rows} ctx {context_len} with {n} blocks in a batch of {batch_rows}");
        }
        if let Some(b) = table.iter().find(|&&b| b as usize >= cache_blocks) {
            bail!("paged_attention: block {b} outside a cache of {cache_blocks} blocks");
        }
        seqs.push(AttnSeq {
            row_start,
            rows,
            context_len,
            block_table: table,
        });
        i += 4 + n;
    }
    Ok(seqs)
}

pub struct PagedAttention<'a> {
    /// The step's attention index (a view of its index upload).
    pub index: &'a Tensor,
    pub heads: usize,
    pub block_size: usize,
}

fn grouped<T: KvElem>(
    c: &[T],
    l: &Layout,
    q: &[f32],
    seqs: &[AttnSeq],
    heads: usize,
    bs: usize,
    out: &mut [f32],
) -> Result<()> {
    let (kvh, hd) = (l.dims()[2], l.dims()[3]);
    let c = &c[l.contiguous_offsets().map_or(0, |o| o.0)..][..l.shape().elem_count()];
    let (k, v) = c.split_at(c.len() / 2);
    let view = KvView {
        k,
        v,
        block_size: bs,
        kv_heads: kvh,
        head_dim: hd,
    };
    paged_attention_grouped(q, seqs, view, heads, out);
    Ok(())
}

impl CustomOp2 for PagedAttention<'_> {
    fn name(&self) -> &'static str {
        "paged_attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = slice::<f32>(qs, ql)?;
        if !cl.is_contiguous() || cl.dims().len() != 4 || cl.dims()[0] != 2 {
            bail!("paged_attention: cache must be a contiguous [2, slots, kv_heads, head_dim], got {:?}", cl.dims());
        }
        let (slots, kvh, hd) = (cl.dims()[1], cl.dims()[2], cl.dims()[3]);
        let rows = ql.dims()[0];
        if ql.dims() != [rows, self.heads * hd] || self.heads % kvh != 0 {
            bail!(
                "paged_attention: q {:?} for {} heads over kv {:?}",
                ql.dims(),
                self.heads,
                cl.dims()
            );
        }
        let idx = self.index.to_vec1::<u32>()?;
        let seqs = decode(&idx, rows, self.block_size, slots / self.block_size)?;
        let mut out = vec![0f32; rows * self.heads * hd];
        match cs {
            CpuStorage::F32(_) => {
                let c = slice::<f32>(cs, cl)?;
                let (k, v) = c.split_at(c.len() / 2);
                let view = KvLayerView {
                    k,
                    v,
                    block_size: self.block_size,
                    kv_heads: kvh,
                    head_dim: hd,
                };
                paged_attention(q, &seqs, view, self.heads, &mut out);
            }
            CpuStorage::F16(c) => grouped(c, cl, q, &seqs, self.heads, self.block_size, &mut out)?,
            CpuStorage::BF16(c) => grouped(c, cl, q, &seqs, self.heads, self.block_size, &mut out)?,
            other => bail!(
                "paged_attention: unsupported cache dtype {:?}",
                other.dtype()
            ),
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, self.heads * hd))))
    }
}
