//! The adapter slot pool as the SGMV op reads it: per layer and projection, every slot's pair in
//! two contiguous device tensors — slot `k`'s A packed `[rank_k, in]` at `k * max_rank * in`, its B
//! packed `[out, rank_k]` at `k * out * max_rank` — plus each slot's rank (0: not targeted) and
//! scale, kept on the host (the CPU twin, launch checks) and as one small device tensor (the
//! kernels). A page-in copies one adapter into its slot ([`LoraPool::fill`]); nothing else writes
//! the pool, and nothing is uploaded per step. On the CPU twin a page-in writes the pool tensors
//! directly; on CUDA it goes through a pinned host buffer on a second stream, ordered after the
//! last step that read the slot by an event (`cuda_page_in`; the caller reports each step's reads
//! with [`LoraPool::end_step`]).

use crate::lora::LoraAdapter;
use candle_core::{bail, DType, Device, Result, Tensor};

/// One (layer, projection): `[slots * max_rank * in]` and `[slots * out * max_rank]`, flat.
pub struct ProjPool {
    pub a: Tensor,
    pub b: Tensor,
    pub in_dim: usize,
    pub out_dim: usize,
}

pub struct LoraPool {
    /// `proj[layer][Proj::index()]`.
    pub proj: Vec<[ProjPool; 7]>,
    pub slots: usize,
    pub max_rank: usize,
    pub dtype: DType,
    /// Per (layer, projection): `[rank; slots]` then `[scale bits; slots]`.
    meta_host: Vec<u32>,
    /// `meta_host` on the device (rewritten after each page-in).
    pub meta: Tensor,
    /// On CUDA: the pinned buffer, copy stream and per-slot read events of page-ins.
    #[cfg(feature = "cuda")]
    stager: Option<super::cuda_page_in::CudaStager>,
}

impl LoraPool {
    /// An empty pool of `slots` slots for `layers` layers whose projections are `dims[p] = (in, out)`.
    pub fn new(
        layers: usize,
        dims: [(usize, usize); 7],
        slots: usize,
        max_rank: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let proj = (0..layers)
            .map(|_| {
                let mk = |(i, o): (usize, usize)| -> Result<ProjPool> {
                    Ok(ProjPool {
                        a: Tensor::zeros(slots * max_rank * i, dtype, dev)?,
                        b: Tensor::zeros(slots * o * max_rank, dtype, dev)?,
                        in_dim: i,
                        out_dim: o,
                    })
                };
                let v = dims.into_iter().map(mk).collect::<Result<Vec<_>>>()?;
                Ok(v.try_into()
                    .unwrap_or_else(|_| unreachable!("seven projections")))
            })
            .collect::<Result<Vec<[ProjPool; 7]>>>()?;
        let meta_host = vec![0u32; layers * 7 * 2 * slots];
        let meta = Tensor::from_slice(&meta_host, meta_host.len(), dev)?;
        Ok(LoraPool {
            proj,
            slots,
            max_rank,
            dtype,
            meta_host,
            meta,
            #[cfg(feature = "cuda")]
            stager: match dev {
                Device::Cuda(d) => Some(super::cuda_page_in::CudaStager::new(d, slots)?),
                _ => None,
            },
        })
    }

    /// Offset of (layer, proj)'s meta block in `meta`.
    pub fn meta_offset(&self, layer: usize, proj: usize) -> usize {
        (layer * 7 + proj) * 2 * self.slots
    }

    /// Rank and scale of `slot` at (layer, proj); rank 0 when the occupant does not target it.
    pub fn rank_scale(&self, layer: usize, proj: usize, slot: usize) -> (usize, f32) {
        let m = self.meta_offset(layer, proj);
        (
            self.meta_host[m + slot] as usize,
            f32::from_bits(self.meta_host[m + self.slots + slot]),
        )
    }

    /// Copies `ad` into `slot` (every targeted pair at its own rank), then rewrites the device meta.
    pub fn fill(&mut self, slot: usize, ad: &LoraAdapter) -> Result<()> {
        if ad.layers.len() != self.proj.len() {
            bail!(
                "lora pool: adapter of {} layers for a model of {}",
                ad.layers.len(),
                self.proj.len()
            );
        }
        #[cfg(feature = "cuda")]
        if self.stager.is_some() {
            return self.fill_cuda(slot, ad);
        }
        for (l, layer) in ad.layers.iter().enumerate() {
            for (p, lw) in layer.iter().enumerate() {
                let pair = lw
                    .as_ref()
                    .map(|w| (w.a.as_slice(), w.b.as_slice(), w.rank, w.scale));
                self.set_pair(slot, l, p, pair)?;
            }
        }
        self.upload_meta()
    }

    /// Writes one pair `(A [rank, in], B [out, rank], rank, scale)` (or none) into `slot` at
    /// (layer, proj); the device meta is rewritten by [`LoraPool::upload_meta`].
    pub fn set_pair(
        &mut self,
        slot: usize,
        layer: usize,
        proj: usize,
        pair: Option<(&[f32], &[f32], usize, f32)>,
    ) -> Result<()> {
        let r = self.max_rank;
        if slot >= self.slots || layer >= self.proj.len() || proj >= 7 {
            bail!("lora pool: slot {slot} layer {layer} proj {proj} outside the pool");
        }
        let m = self.meta_offset(layer, proj);
        let pool = &self.proj[layer][proj];
        let (rank, scale) = match pair {
            Some((a, b, rank, scale)) if rank > 0 => {
                if rank > r || a.len() != rank * pool.in_dim || b.len() != pool.out_dim * rank {
                    bail!(
                        "lora pool: pair of rank {rank} ({} / {} values) for {}->{} (max rank {r})",
                        a.len(),
                        b.len(),
                        pool.in_dim,
                        pool.out_dim
                    );
                }
                let dev = pool.a.device();
                let t = |v: &[f32]| Tensor::from_slice(v, v.len(), dev)?.to_dtype(self.dtype);
                pool.a.slice_set(&t(a)?, 0, slot * r * pool.in_dim)?;
                pool.b.slice_set(&t(b)?, 0, slot * pool.out_dim * r)?;
                (rank as u32, scale.to_bits())
            }
            _ => (0, 0),
        };
        self.meta_host[m + slot] = rank;
        self.meta_host[m + self.slots + slot] = scale;
        Ok(())
    }

    /// Records that the step just enqueued read `slots` (on CUDA: an event on the compute stream
    /// that a later page-in into one of them waits for; on the twin the caller's step counter
    /// says the same, since a step completes before the next begins).
    pub fn end_step(&mut self, slots: &[usize]) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(st) = self.stager.as_mut() {
            return st.end_step(slots);
        }
        let _ = slots;
        Ok(())
    }

    /// [`LoraPool::fill`] on CUDA: every pair staged in the pinned buffer (in the pool dtype),
    /// then copied on the copy stream after the slot's last reader (`cuda_page_in`).
    #[cfg(feature = "cuda")]
    fn fill_cuda(&mut self, slot: usize, ad: &LoraAdapter) -> Result<()> {
        let (r, size) = (self.max_rank, self.dtype.size_in_bytes());
        if slot >= self.slots {
            bail!("lora pool: slot {slot} outside a pool of {}", self.slots);
        }
        // (layer, proj, A?, element offset, values), every targeted pair's A and B.
        let mut parts: Vec<(usize, usize, bool, usize, &[f32])> = Vec::new();
        let mut meta = Vec::new();
        for (l, layer) in ad.layers.iter().enumerate() {
            for (p, lw) in layer.iter().enumerate() {
                let pool = &self.proj[l][p];
                let (rank, scale) = match lw {
                    Some(w) if w.rank > 0 => (w.rank, w.scale),
                    _ => {
                        meta.push((l, p, 0, 0));
                        continue;
                    }
                };
                let w = lw.as_ref().expect("targeted");
                if rank > r || w.a.len() != rank * pool.in_dim || w.b.len() != pool.out_dim * rank {
                    bail!(
                        "lora pool: pair of rank {rank} for {}->{} (max rank {r})",
                        pool.in_dim,
                        pool.out_dim
                    );
                }
                parts.push((l, p, true, slot * r * pool.in_dim, w.a.as_slice()));
                parts.push((l, p, false, slot * pool.out_dim * r, w.b.as_slice()));
                meta.push((l, p, rank as u32, scale.to_bits()));
            }
        }
        let total: usize = parts.iter().map(|x| x.4.len() * size).sum();
        let st = self.stager.as_mut().expect("cuda pool");
        let mut ranges = Vec::with_capacity(parts.len());
        let buf = st.buffer(total.max(1))?;
        let mut at = 0;
        for part in &parts {
            let n = part.4.len() * size;
            super::cuda_page_in::encode(self.dtype, part.4, &mut buf[at..at + n])?;
            ranges.push(at..at + n);
            at += n;
        }
        st.after_reads(slot)?;
        for ((l, p, is_a, offset, _), src) in parts.iter().zip(ranges) {
            let pool = &self.proj[*l][*p];
            st.copy(if *is_a { &pool.a } else { &pool.b }, *offset, src)?;
        }
        st.finish()?;
        for (l, p, rank, scale) in meta {
            let m = self.meta_offset(l, p);
            self.meta_host[m + slot] = rank;
            self.meta_host[m + self.slots + slot] = scale;
        }
        self.upload_meta()
    }

    /// Uploads the host meta (ranks, scales) after the pairs of a page-in were written.
    pub fn upload_meta(&mut self) -> Result<()> {
        self.meta = Tensor::from_slice(&self.meta_host, self.meta_host.len(), self.meta.device())?;
        Ok(())
    }

    pub fn bytes(&self) -> usize {
        let n = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        self.proj.iter().flatten().map(|p| n(&p.a) + n(&p.b)).sum()
    }

    /// Bytes a pool of this shape takes, before allocating it (start-up memory planning).
    pub fn planned_bytes(
        layers: usize,
        dims: [(usize, usize); 7],
        slots: usize,
        max_rank: usize,
        dtype: DType,
    ) -> usize {
        let per_layer: usize = dims.iter().map(|(i, o)| i + o).sum();
        layers * per_layer * slots * max_rank * dtype.size_in_bytes()
    }
}
