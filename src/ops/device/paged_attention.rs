//! Paged attention as a candle custom op: queries `[rows, heads * head_dim]` of a flattened batch
//! attend causally, each sequence through its block table, over one layer's cache
//! `[2, slots, kv_heads, head_dim]` (K then V) — decode rows and varlen prefill rows in one call.
//! The sequences come from the step's index upload in the one encoding `encode_attn_index`
//! writes, which both sides read: `row_seq[rows] | row_pos[rows] | (row_start, rows,
//! context_len)[seqs] | block tables [seqs, max_blocks]` (zero-padded). `cpu_fwd` is
//! `ops::cpu::paged_attention` (f32 cache, the exact path) or `paged_attention_grouped`
//! (f16/bf16 cache) on f32 queries, exactly as the CPU executor calls them; `cuda_fwd` launches
//! `kernels/paged_attention.cu` with queries, cache and output in the cache's dtype.

use super::storage::slice;
use crate::ops::cpu::{
    paged_attention, paged_attention_grouped, AttnSeq, KvElem, KvLayerView, KvView,
};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// What the host knows of an attention index without reading it back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttnShape {
    pub rows: usize,
    pub seqs: usize,
    pub max_blocks: usize,
    /// One past the largest block id a table holds (checked against the cache at launch).
    pub block_end: usize,
}

impl AttnShape {
    fn meta(&self) -> usize {
        2 * self.rows
    }
    fn tables(&self) -> usize {
        self.meta() + 3 * self.seqs
    }
    pub fn len(&self) -> usize {
        self.tables() + self.seqs * self.max_blocks
    }
}

/// Appends the attention index of `seqs` (rows contiguous from 0, in order, every row covered by
/// its table). Errors on a batch the kernels could not read.
pub fn encode_attn_index(
    out: &mut Vec<u32>,
    seqs: &[AttnSeq],
    block_size: usize,
) -> Result<AttnShape> {
    let max_blocks = seqs.iter().map(|s| s.block_table.len()).max().unwrap_or(0);
    let rows = seqs.iter().map(|s| s.rows).sum();
    let mut shape = AttnShape {
        rows,
        seqs: seqs.len(),
        max_blocks,
        block_end: 0,
    };
    let start = out.len();
    out.resize(start + shape.len(), 0);
    let buf = &mut out[start..];
    let mut row = 0;
    for (i, s) in seqs.iter().enumerate() {
        if s.row_start != row
            || s.rows > s.context_len
            || s.context_len > s.block_table.len() * block_size
        {
            bail!(
                "attention index: sequence {i} rows {}+{} context {} with {} blocks of {block_size} (next row {row})",
                s.row_start, s.rows, s.context_len, s.block_table.len()
            );
        }
        for r in 0..s.rows {
            buf[row + r] = i as u32;
            buf[rows + row + r] = (s.context_len - s.rows + r) as u32;
        }
        let m = shape.meta() + 3 * i;
        buf[m..m + 3].copy_from_slice(&[s.row_start, s.rows, s.context_len].map(|x| x as u32));
        let t = shape.tables() + i * max_blocks;
        buf[t..t + s.block_table.len()].copy_from_slice(s.block_table);
        let used = s.context_len.div_ceil(block_size);
        let top = s.block_table[..used]
            .iter()
            .max()
            .map_or(0, |&b| b as usize + 1);
        shape.block_end = shape.block_end.max(top);
        row += s.rows;
    }
    Ok(shape)
}

/// The sequences of an attention index, checked against the batch and the cache.
fn decode<'a>(
    idx: &'a [u32],
    shape: &AttnShape,
    block_size: usize,
    cache_blocks: usize,
) -> Result<Vec<AttnSeq<'a>>> {
    if idx.len() != shape.len() {
        bail!("paged_attention: index of {} for {shape:?}", idx.len());
    }
    let mut seqs = Vec::with_capacity(shape.seqs);
    for i in 0..shape.seqs {
        let m = &idx[shape.meta() + 3 * i..][..3];
        let [row_start, rows, context_len] = [m[0], m[1], m[2]].map(|x| x as usize);
        let used = context_len.div_ceil(block_size);
        if row_start + rows > shape.rows || rows > context_len || used > shape.max_blocks {
            bail!("paged_attention: sequence rows {row_start}+{rows} ctx {context_len} in a batch of {}", shape.rows);
        }
        let table = &idx[shape.tables() + i * shape.max_blocks..][..used];
        if let Some(b) = table.iter().find(|&&b| b as usize >= cache_blocks) {
            bail!("paged_attention: block {b} outside a cache of {cache_blocks} blocks");
        }
        seqs.push(AttnSeq {
            row_start,
            rows,
            context_len,
            block_table: table,
        });
    }
    Ok(seqs)
}

pub struct PagedAttention<'a> {
    /// The step's attention index (a view of its index upload).
    pub index: &'a Tensor,
    pub shape: AttnShape,
    pub heads: usize,
    pub block_size: usize,
}

impl PagedAttention<'_> {
    /// `(slots, kv_heads, head_dim)` of the cache, after checking it and the queries' shape.
    fn check(&self, ql: &Layout, cl: &Layout) -> Result<(usize, usize, usize)> {
        if !cl.is_contiguous() || cl.dims().len() != 4 || cl.dims()[0] != 2 {
            bail!("paged_attention: cache must be a contiguous [2, slots, kv_heads, head_dim], got {:?}", cl.dims());
        }
        let (slots, kvh, hd) = (cl.dims()[1], cl.dims()[2], cl.dims()[3]);
        if ql.dims() != [self.shape.rows, self.heads * hd] || kvh == 0 || self.heads % kvh != 0 {
            bail!(
                "paged_attention: q {:?} for {} heads, {} rows over kv {:?}",
                ql.dims(),
                self.heads,
                self.shape.rows,
                cl.dims()
            );
        }
        Ok((slots, kvh, hd))
    }
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
        let (slots, kvh, hd) = self.check(ql, cl)?;
        let rows = self.shape.rows;
        let idx = self.index.to_vec1::<u32>()?;
        let seqs = decode(&idx, &self.shape, self.block_size, slots / self.block_size)?;
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

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        qs: &candle_core::CudaStorage,
        ql: &Layout,
        cs: &candle_core::CudaStorage,
        cl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::DType;
        let (slots, kvh, hd) = self.check(ql, cl)?;
        if qs.dtype() != cs.dtype() {
            bail!(
                "paged_attention: q is {:?}, the cache {:?}",
                qs.dtype(),
                cs.dtype()
            );
        }
        if hd % 32 != 0 || hd > 256 {
            bail!("paged_attention: head_dim {hd}: the kernel needs a multiple of 32, at most 256");
        }
        if self.shape.block_end * self.block_size > slots {
            bail!(
                "paged_attention: block {} outside a cache of {} blocks",
                self.shape.block_end - 1,
                slots / self.block_size
            );
        }
        let out_shape = Shape::from((self.shape.rows, self.heads * hd));
        let out = match cs.dtype() {
            DType::F32 => cuda::launch::<f32>(self, qs, ql, cs, cl, (slots, kvh, hd))?,
            DType::F16 => cuda::launch::<half::f16>(self, qs, ql, cs, cl, (slots, kvh, hd))?,
            DType::BF16 => cuda::launch::<half::bf16>(self, qs, ql, cs, cl, (slots, kvh, hd))?,
            d => bail!("paged_attention: unsupported cache dtype {d:?}"),
        };
        Ok((out, out_shape))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::super::cuda::{func, grid, held, i32_arg, view};
    use super::PagedAttention;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg, ValidAsZeroBits};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaStorage, Layout, Result};

    pub fn launch<T: CudaDType + DeviceRepr + ValidAsZeroBits>(
        op: &PagedAttention,
        qs: &CudaStorage,
        ql: &Layout,
        cs: &CudaStorage,
        cl: &Layout,
        (slots, kvh, hd): (usize, usize, usize),
    ) -> Result<CudaStorage> {
        let s = op.shape;
        let dev = qs.device.clone();
        let mut out = dev.alloc_zeros::<T>(s.rows * op.heads * hd)?;
        if s.rows > 0 {
            let idx = held(op.index);
            let (row_seq, row_pos) = (
                idx.part::<u32>(0..s.rows)?,
                idx.part::<u32>(s.rows..2 * s.rows)?,
            );
            let tables = idx.part::<u32>(s.tables()..s.len())?;
            let (q, cache) = (view::<T>(qs, ql)?, view::<T>(cs, cl)?);
            let v_off = (slots * kvh * hd) as i64;
            let arg = |what, v| i32_arg(what, v);
            let (max_blocks, heads) = (
                arg("max_blocks", s.max_blocks.max(1))?,
                arg("heads", op.heads)?,
            );
            let (kv_heads, head_dim, bs) = (
                arg("kv_heads", kvh)?,
                arg("head_dim", hd)?,
                arg("block_size", op.block_size)?,
            );
            let scale = 1.0 / (hd as f32).sqrt();
            let f = func(qs, "paged_attention", "paged_attention", cs.dtype())?;
            let mut b = f.builder();
            b.arg(&mut out)
                .arg(&q)
                .arg(&cache)
                .arg(&v_off)
                .arg(&tables)
                .arg(&max_blocks);
            b.arg(&row_seq)
                .arg(&row_pos)
                .arg(&heads)
                .arg(&kv_heads)
                .arg(&head_dim)
                .arg(&bs)
                .arg(&scale);
            // SAFETY: argument order and types match `paged_attention_*` (kernels/paged_attention.cu,
            // 4 warps per block as its PA_WARPS assumes). `check` proved q is [rows, heads·hd] and the
            // cache a contiguous [2, slots, kvh, hd] (so K is the first half, V at v_off); the index
            // was written by `encode_attn_index` (every row's positions covered by its table, row_seq
            // < seqs) and its views have the lengths `AttnShape` gives; every block id < block_end
            // and block_end·block_size <= slots (checked above), so every read is in bounds; out has
            // rows·heads·hd elements; hd is a multiple of 32, at most 256 (the register tile).
            unsafe { b.launch(grid((s.rows as u32, op.heads as u32, 1), 128, 0)) }.w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
}
