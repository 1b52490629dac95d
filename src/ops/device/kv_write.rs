//! The paged KV write as a candle in-place op on one layer's cache `[2, slots, kv_heads, head_dim]`
//! (K then V, the engine's block layout: slot = `block * block_size + offset`): row `i` of the
//! step's `k`/`v` (`[rows, kv_heads * head_dim]`, f32) goes to slot `slots[i]`. `cpu_fwd` is
//! `ops::cpu::write_kv` (f32 cache) / `write_kv_as` (f16, bf16).

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
        let (k, v) = (slice::<f32>(k, kl)?, slice::<f32>(v, vl)?);
        let slots: Vec<usize> = self
            .slots
            .to_vec1::<u32>()?
            .into_iter()
            .map(|s| s as usize)
            .collect();
        let stride = cl.dims()[2..].iter().product::<usize>();
        let room = cl.dims()[1];
        if k.len() != slots.len() * stride || v.len() != k.len() {
            bail!(
                "kv_write: {} slots for k {:?} v {:?}",
                slots.len(),
                kl.dims(),
                vl.dims()
            );
        }
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
}
