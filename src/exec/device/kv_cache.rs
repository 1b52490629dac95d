//! The paged KV cache on the device: per layer one tensor `[2, num_blocks * block_size, kv_heads,
//! head_dim]` (K then V) in the engine's block layout (slot = `block * block_size + offset`), so
//! the slots and block tables of a `StepPlan` index it directly. Written and read only through the
//! `KvWrite` and `PagedAttention` custom ops; this type never decides which slot a token goes to.
//! On the CPU twin the ops take f32 rows whatever the cache dtype (the CPU executor's own
//! conversions); on CUDA rows are cast to the cache dtype and the attention output back.

use crate::exec::KvDtype;
use crate::model::ModelConfig;
use crate::ops::device::{AttnShape, KvWrite, PagedAttention};
use candle_core::{DType, Device, Result, Tensor};

pub struct DeviceKv {
    layers: Vec<Tensor>,
    pub dtype: KvDtype,
    pub block_size: usize,
    pub num_blocks: usize,
}

impl DeviceKv {
    /// A zeroed cache for `m`'s layers and KV heads; `dtype` must be resolved (not `Auto`).
    pub fn new(
        dtype: KvDtype,
        m: &ModelConfig,
        blocks: (usize, usize),
        dev: &Device,
    ) -> Result<Self> {
        let (num_blocks, block_size) = blocks;
        let dt = match dtype {
            KvDtype::F32 => DType::F32,
            KvDtype::BF16 => DType::BF16,
            KvDtype::F16 | KvDtype::Auto => DType::F16,
        };
        let shape = (2, num_blocks * block_size, m.kv_heads, m.head_dim);
        let layers = (0..m.layers)
            .map(|_| Tensor::zeros(shape, dt, dev))
            .collect::<Result<_>>()?;
        Ok(DeviceKv {
            layers,
            dtype,
            block_size,
            num_blocks,
        })
    }

    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// Writes the step's K/V rows (`[rows, kv_heads * head_dim]`) of `layer` into `slots`.
    pub fn write(&self, layer: usize, k: &Tensor, v: &Tensor, slots: &Tensor) -> Result<()> {
        let cache = &self.layers[layer];
        let (k, v) = (self.rows(k, cache)?, self.rows(v, cache)?);
        cache.inplace_op3(&k, &v, &KvWrite { slots })
    }

    /// `x` as the ops take it next to `cache`: f32 on the CPU twin, the cache dtype on CUDA.
    fn rows(&self, x: &Tensor, cache: &Tensor) -> Result<Tensor> {
        match x.device().is_cpu() {
            true => x.to_dtype(DType::F32),
            false => x.to_dtype(cache.dtype())?.contiguous(),
        }
    }

    /// Attention of the step's queries (`[rows, heads * head_dim]`) over `layer`'s cache.
    pub fn attention(
        &self,
        layer: usize,
        q: &Tensor,
        index: &Tensor,
        shape: AttnShape,
        heads: usize,
    ) -> Result<Tensor> {
        let op = PagedAttention {
            index,
            shape,
            heads,
            block_size: self.block_size,
        };
        let cache = &self.layers[layer];
        self.rows(q, cache)?
            .apply_op2_no_bwd(cache, &op)?
            .to_dtype(q.dtype())
    }

    /// Copies block `src`'s K/V (every layer) over block `dst`'s.
    pub fn copy_block(&self, src: usize, dst: usize) -> Result<()> {
        let bs = self.block_size;
        for t in &self.layers {
            let from = t.narrow(1, src * bs, bs)?.force_contiguous()?;
            t.slice_set(&from, 1, dst * bs)?;
        }
        Ok(())
    }
}
