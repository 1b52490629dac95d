//! The paged KV write as a candle in-place op on one layer's cache `[2, slots, kv_heads, head_dim]`
//! (K then V, the engine's block layout: slot = `block * block_size + offset`): row `i` of the
//! step's `k`/`v` (`[rows, kv_heads * head_dim]`) goes to slot `slots[i]`. `cpu_fwd` is
//! `ops::cpu::write_kv` (f32 cache) / `write_kv_as` (f16, bf16) from f32 rows; `cuda_fwd` launches
//! `reshape_and_cache` (kernels/paged_attention.cu) with rows in the cache's dtype.

use super::storage::slice;
use crate::ops::cpu::{write_kv, write_kv_as, KvElem};
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, InplaceOp3, Layout, Result, Tensor};

pub struct KvWrite<'a> {
    /// `[rows]` u32 cache slots (a view of the step's index upload).
    pub slots: &'a Tensor,
}

fn halves<'a, T>(c: &'a mut [T], l: &Layout) -> Result<(&'a mut [T], &'a mut [T])> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("kv cache must be contiguous")
    };
    let c = &mut c[a..b];
    let n = c.len() / 2;
    Ok(c.split_at_mut(n))
}

fn write_as<T: KvElem>(
    c: &mut [T],
    l: &Layout,
    k: &[f32],
    v: &[f32],
    s: &[usize],
    w: usize,
) -> Result<()> {
    let (ck, cv) = halves(c, l)?;
    write_kv_as(k, v, s, w, ck, cv);
    Ok(())
}

impl KvWrite<'_> {
    /// `(slots in the cache, elements per row, rows)` after checking every shape.
    fn check(&self, cl: &Layout, kl: &Layout, vl: &Layout) -> Result<(usize, usize, usize)> {
        if !cl.is_contiguous() || cl.dims().len() != 4 || cl.dims()[0] != 2 {
            bail!(
                "kv_write: cache must be a contiguous [2, slots, kv_heads, head_dim], got {:?}",
                cl.dims()
            );
        }
        let (room, stride) = (cl.dims()[1], cl.dims()[2..].iter().product::<usize>());
        let rows = self.slots.elem_count();
        if kl.shape().elem_count() != rows * stride || vl.dims() != kl.dims() {
            bail!(
                "kv_write: {rows} slots for k {:?} v {:?}",
                kl.dims(),
                vl.dims()
            );
        }
        Ok((room, stride, rows))
    }
}

impl InplaceOp3 for KvWrite<'_> {
    fn name(&self) -> &'static str {
        "kv_write"
    }

    fn cpu_fwd(
        &self,
        cache: &mut CpuStorage,
        cl: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> Result<()> {
        let (room, stride, _) = self.check(cl, kl, vl)?;
        let (k, v) = (slice::<f32>(k, kl)?, slice::<f32>(v, vl)?);
        let slots: Vec<usize> = self
            .slots
            .to_vec1::<u32>()?
            .into_iter()
            .map(|s| s as usize)
            .collect();
        if let Some(s) = slots.iter().find(|&&s| s >= room) {
            bail!("kv_write: slot {s} outside a cache of {room} slots");
        }
        match cache {
            CpuStorage::F32(c) => {
                let (ck, cv) = halves(c, cl)?;
                write_kv(k, v, &slots, stride, ck, cv);
                Ok(())
            }
            CpuStorage::F16(c) => write_as(c, cl, k, v, &slots, stride),
            CpuStorage::BF16(c) => write_as(c, cl, k, v, &slots, stride),
            other => bail!("kv_write: unsupported cache dtype {:?}", other.dtype()),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        cache: &mut candle_core::CudaStorage,
        cl: &Layout,
        k: &candle_core::CudaStorage,
        kl: &Layout,
        v: &candle_core::CudaStorage,
        vl: &Layout,
    ) -> Result<()> {
        use candle_core::DType;
        let dims = self.check(cl, kl, vl)?;
        let dt = cache.dtype();
        if k.dtype() != dt || v.dtype() != dt {
            bail!(
                "kv_write: k {:?} v {:?} into a {dt:?} cache",
                k.dtype(),
                v.dtype()
            );
        }
        let io = (cache, cl, k, kl, v, vl);
        match dt {
            DType::F32 => cuda::launch::<f32>(self, io, dims),
            DType::F16 => cuda::launch::<half::f16>(self, io, dims),
            DType::BF16 => cuda::launch::<half::bf16>(self, io, dims),
            d => bail!("kv_write: unsupported cache dtype {d:?}"),
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::super::cuda::{func, grid, held, i32_arg, view, view_mut};
    use super::KvWrite;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg, ValidAsZeroBits};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaStorage, Layout, Result};

    type Io<'a> = (
        &'a mut CudaStorage,
        &'a Layout,
        &'a CudaStorage,
        &'a Layout,
        &'a CudaStorage,
        &'a Layout,
    );

    pub fn launch<T: CudaDType + DeviceRepr + ValidAsZeroBits>(
        op: &KvWrite,
        (cache, cl, k, kl, v, vl): Io,
        (room, stride, rows): (usize, usize, usize),
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let f = func(cache, "paged_attention", "reshape_and_cache", cache.dtype())?;
        let slots = held(op.slots);
        let slots = slots.view::<u32>()?;
        let (k, v) = (view::<T>(k, kl)?, view::<T>(v, vl)?);
        let mut c = view_mut::<T>(cache, cl)?;
        let (stride_i, v_off, capacity) = (
            i32_arg("kv stride", stride)?,
            (room * stride) as i64,
            room as i64,
        );
        let mut b = f.builder();
        b.arg(&k)
            .arg(&v)
            .arg(&slots)
            .arg(&stride_i)
            .arg(&mut c)
            .arg(&v_off)
            .arg(&capacity);
        // SAFETY: argument order and types match `reshape_and_cache_*`. `check` proved k and v
        // hold `rows` rows of `stride` elements and the cache is [2, room, ·] contiguous (V at
        // v_off = room·stride); the kernel skips any slot >= capacity = room, so every write lands
        // inside this layer's K or V half.
        unsafe { b.launch(grid((rows as u32, 1, 1), 256, 0)) }.w()?;
        Ok(())
    }
}
