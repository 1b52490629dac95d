//! SGMV/BGMV over the adapter slot pool as a candle in-place op: `y[rows] += Σ coeff · (x·Aᵀ)·Bᵀ`
//! per segment of rows sharing one adapter mix (a one-row segment is BGMV). Each slot holds its
//! adapter's pairs at their own rank (mixed ranks in one call); a mix is weighted `(slot, weight)`
//! terms applied in order with `coeff = scale · weight`; rows in no segment are left as they are.
//! The segments come from the step's index upload in the one encoding `encode_lora_index` writes
//! and both sides read (layout in kernels/sgmv.cu). `cpu_fwd` is `ops::cpu::sgmv`, the CPU
//! executor's own LoRA op, over the pool's host storage; `cuda_fwd` launches kernels/sgmv.cu.

use super::lora_pool::LoraPool;
use super::storage::{slice, slice_mut_f32};
use crate::ops::cpu::{sgmv, LoraSegment, LoraTerm};
use candle_core::{bail, CpuStorage, InplaceOp2, Layout, Result, Storage, Tensor};
use std::ops::Range;

/// What the host knows of a LoRA index without reading it back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoraShape {
    pub segs: usize,
    pub terms: usize,
    /// Rows of the largest segment (launch shape).
    pub max_rows: usize,
    /// Scratch floats: Σ over terms of rows(segment) · max_rank.
    pub scratch: usize,
}

impl LoraShape {
    fn seg_terms(&self) -> usize {
        2 * self.segs
    }
    fn term(&self, k: usize) -> Range<usize> {
        let start = 3 * self.segs + 1 + k * self.terms;
        start..start + self.terms
    }
    pub fn len(&self) -> usize {
        3 * self.segs + 1 + 4 * self.terms
    }
    pub fn is_empty(&self) -> bool {
        self.terms == 0
    }
}

/// Appends the LoRA index of `segments` (sorted, disjoint row ranges, each with its `(slot,
/// weight)` terms; segments without terms are dropped) for a pool of rank <= `max_rank`.
pub fn encode_lora_index(
    out: &mut Vec<u32>,
    segments: &[(Range<usize>, Vec<(u32, f32)>)],
    max_rank: usize,
) -> Result<LoraShape> {
    let segs: Vec<_> = segments
        .iter()
        .filter(|(r, t)| !t.is_empty() && !r.is_empty())
        .collect();
    let terms = segs.iter().map(|(_, t)| t.len()).sum();
    let mut shape = LoraShape {
        segs: segs.len(),
        terms,
        max_rows: 0,
        scratch: 0,
    };
    let start = out.len();
    out.resize(start + shape.len(), 0);
    let buf = &mut out[start..];
    let (mut t, mut prev_end) = (0, 0);
    for (s, (rows, ts)) in segs.iter().enumerate() {
        if rows.start < prev_end {
            bail!("lora index: segment {rows:?} overlaps or precedes the previous one");
        }
        prev_end = rows.end;
        buf[2 * s] = rows.start as u32;
        buf[2 * s + 1] = rows.end as u32;
        buf[shape.seg_terms() + s] = t as u32;
        for &(slot, w) in ts {
            let vals = [s as u32, slot, w.to_bits(), shape.scratch as u32];
            for (k, v) in vals.into_iter().enumerate() {
                buf[shape.term(k).start + t] = v;
            }
            shape.scratch += rows.len() * max_rank;
            t += 1;
        }
        shape.max_rows = shape.max_rows.max(rows.len());
    }
    buf[shape.seg_terms() + shape.segs] = t as u32;
    Ok(shape)
}

pub struct Sgmv<'a> {
    /// The step's LoRA index (a view of its index upload).
    pub index: &'a Tensor,
    pub shape: LoraShape,
    pub pool: &'a LoraPool,
    pub layer: usize,
    pub proj: usize,
}

impl Sgmv<'_> {
    /// `(rows, in, out)` after checking x, y and the pool agree.
    fn check(&self, yl: &Layout, xl: &Layout) -> Result<(usize, usize, usize)> {
        let p = &self.pool.proj[self.layer][self.proj];
        let (&[rows, din], &[yrows, dout]) = (xl.dims(), yl.dims()) else {
            bail!("sgmv: x {:?} y {:?}", xl.dims(), yl.dims())
        };
        if rows != yrows || din != p.in_dim || dout != p.out_dim {
            bail!(
                "sgmv: x {:?} y {:?} for a {}->{} projection",
                xl.dims(),
                yl.dims(),
                p.in_dim,
                p.out_dim
            );
        }
        Ok((rows, din, dout))
    }
}

/// The segments and terms of an index, checked against the batch and the pool.
fn decode(
    idx: &[u32],
    shape: &LoraShape,
    rows: usize,
    slots: usize,
) -> Result<Vec<(Range<usize>, Vec<(usize, f32)>)>> {
    if idx.len() != shape.len() {
        bail!("sgmv: index of {} for {shape:?}", idx.len());
    }
    let mut segs = Vec::with_capacity(shape.segs);
    for s in 0..shape.segs {
        let r = idx[2 * s] as usize..idx[2 * s + 1] as usize;
        let (t0, t1) = (
            idx[shape.seg_terms() + s] as usize,
            idx[shape.seg_terms() + s + 1] as usize,
        );
        if r.end > rows || r.start > r.end || t0 > t1 || t1 > shape.terms {
            bail!("sgmv: segment {r:?} terms {t0}..{t1} in a batch of {rows}");
        }
        let terms = (t0..t1)
            .map(|t| {
                (
                    idx[shape.term(1).start + t] as usize,
                    f32::from_bits(idx[shape.term(2).start + t]),
                )
            })
            .collect::<Vec<_>>();
        if let Some((slot, _)) = terms.iter().find(|(s, _)| *s >= slots) {
            bail!("sgmv: adapter slot {slot} outside a pool of {slots}");
        }
        segs.push((r, terms));
    }
    Ok(segs)
}

fn host<'g>(g: &'g Storage, l: &Layout) -> Result<&'g [f32]> {
    match g {
        Storage::Cpu(c) => slice::<f32>(c, l),
        _ => bail!("sgmv: adapter weights are not in host memory"),
    }
}

impl InplaceOp2 for Sgmv<'_> {
    fn name(&self) -> &'static str {
        "sgmv"
    }

    fn cpu_fwd(
        &self,
        ys: &mut CpuStorage,
        yl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
    ) -> Result<()> {
        let (rows, din, dout) = self.check(yl, xl)?;
        let (x, y) = (slice::<f32>(xs, xl)?, slice_mut_f32(ys, yl)?);
        let segs = decode(
            &self.index.to_vec1::<u32>()?,
            &self.shape,
            rows,
            self.pool.slots,
        )?;
        let p = &self.pool.proj[self.layer][self.proj];
        let (ga, la) = p.a.storage_and_layout();
        let (gb, lb) = p.b.storage_and_layout();
        let (pa, pb, r) = (host(&ga, la)?, host(&gb, lb)?, self.pool.max_rank);
        let segments: Vec<LoraSegment> = segs
            .iter()
            .map(|(rows, terms)| LoraSegment {
                rows: rows.clone(),
                terms: terms
                    .iter()
                    .filter_map(|&(slot, w)| {
                        let (rank, scale) = self.pool.rank_scale(self.layer, self.proj, slot);
                        (rank > 0).then(|| LoraTerm {
                            a: &pa[slot * r * din..][..rank * din],
                            b: &pb[slot * dout * r..][..dout * rank],
                            rank,
                            coeff: scale * w,
                        })
                    })
                    .collect(),
            })
            .collect();
        sgmv(x, din, &segments, dout, y);
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ys: &mut candle_core::CudaStorage,
        yl: &Layout,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
    ) -> Result<()> {
        use candle_core::backend::BackendStorage;
        use candle_core::DType;
        let dims = self.check(yl, xl)?;
        let dt = self.pool.dtype;
        if xs.dtype() != dt || ys.dtype() != dt {
            bail!(
                "sgmv: x {:?} y {:?} over a {dt:?} pool",
                xs.dtype(),
                ys.dtype()
            );
        }
        match dt {
            DType::F32 => cuda::launch::<f32>(self, ys, yl, xs, xl, dims),
            DType::F16 => cuda::launch::<half::f16>(self, ys, yl, xs, xl, dims),
            DType::BF16 => cuda::launch::<half::bf16>(self, ys, yl, xs, xl, dims),
            d => bail!("sgmv: unsupported dtype {d:?}"),
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::super::cuda::{func, grid, held, i32_arg, view, view_mut};
    use super::Sgmv;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg, ValidAsZeroBits};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaStorage, Layout, Result};

    const THREADS: u32 = 256;
    const MAX_CHUNKS: usize = 64;

    pub fn launch<T: CudaDType + DeviceRepr + ValidAsZeroBits>(
        op: &Sgmv,
        ys: &mut CudaStorage,
        yl: &Layout,
        xs: &CudaStorage,
        xl: &Layout,
        (_, din, dout): (usize, usize, usize),
    ) -> Result<()> {
        let (sh, pool) = (op.shape, op.pool);
        if sh.terms == 0 {
            return Ok(());
        }
        // Slots are checked on the host against the index the host wrote: the executor encodes
        // it from the plan, whose slots the pool was synced for.
        let idx = held(op.index);
        let seg_rows = idx.part::<u32>(0..2 * sh.segs)?;
        let seg_terms = idx.part::<u32>(sh.seg_terms()..sh.seg_terms() + sh.segs + 1)?;
        let [term_seg, term_slot, term_w, term_s_off] =
            [0, 1, 2, 3].map(|k| idx.part::<u32>(sh.term(k)));
        let (term_seg, term_slot, term_w, term_s_off) =
            (term_seg?, term_slot?, term_w?, term_s_off?);
        let p = &pool.proj[op.layer][op.proj];
        let (pa, pb, meta) = (held(&p.a), held(&p.b), held(&pool.meta));
        let (pa, pb) = (pa.view::<T>()?, pb.view::<T>()?);
        let m = pool.meta_offset(op.layer, op.proj);
        let meta = meta.part::<u32>(m..m + 2 * pool.slots)?;
        let (x, mut y) = (view::<T>(xs, xl)?, view_mut::<T>(ys, yl)?);
        let s = xs.device.alloc_zeros::<f32>(sh.scratch.max(1))?;
        let (in_i, out_i) = (i32_arg("in_dim", din)?, i32_arg("out_dim", dout)?);
        let (rank_i, slots_i) = (
            i32_arg("max_rank", pool.max_rank)?,
            i32_arg("slots", pool.slots)?,
        );

        let shrink = func(xs, "sgmv", "sgmv_shrink", pool.dtype)?;
        let warps = (THREADS / 32) as usize;
        let chunks = (sh.max_rows * pool.max_rank)
            .div_ceil(warps)
            .clamp(1, MAX_CHUNKS) as u32;
        let mut b = shrink.builder();
        b.arg(&x)
            .arg(&in_i)
            .arg(&seg_rows)
            .arg(&term_seg)
            .arg(&term_slot)
            .arg(&term_s_off);
        b.arg(&pa).arg(&meta).arg(&rank_i).arg(&s);
        // SAFETY: argument order and types match `sgmv_shrink_*` (kernels/sgmv.cu). The index was
        // written by `encode_lora_index` (segments sorted and disjoint, term_s_off inside the
        // `scratch` floats allocated here, each term's segment < segs) and `check` proved x is
        // [rows, in]; the executor's segments lie inside the batch and its slots < pool.slots; a
        // slot's rank <= max_rank (checked at fill), so A reads stay inside the slot's block.
        unsafe { b.launch(grid((sh.terms as u32, chunks, 1), THREADS, 0)) }.w()?;

        let expand = func(xs, "sgmv", "sgmv_expand", pool.dtype)?;
        let tiles = dout.div_ceil(THREADS as usize) as u32;
        let row_chunks = sh.max_rows.clamp(1, MAX_CHUNKS) as u32;
        let mut b = expand.builder();
        b.arg(&mut y)
            .arg(&out_i)
            .arg(&seg_rows)
            .arg(&seg_terms)
            .arg(&term_slot)
            .arg(&term_w);
        b.arg(&term_s_off)
            .arg(&pb)
            .arg(&meta)
            .arg(&slots_i)
            .arg(&rank_i)
            .arg(&s);
        // SAFETY: matches `sgmv_expand_*`; segments are disjoint (checked at encoding), so each y
        // element is written by exactly one thread; B reads stay in the slot's [out, rank] block;
        // the scratch is the one the shrink launch wrote, on the same stream, so it ran first.
        unsafe { b.launch(grid((sh.segs as u32, tiles, row_chunks), THREADS, 0)) }.w()?;
        Ok(())
    }
}
