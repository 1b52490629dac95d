//! The model's weights placed on a candle device: every matrix as a dense `[out, in]` tensor in the
//! executor's compute dtype (f32 on the CPU twin, so it computes what the CPU f32 executor
//! computes; GGUF quant blocks are dequantized row by row with the same routine the CPU executor's
//! embedding uses), norms as f32 vectors. Shapes were checked against the config at load.

use crate::model::{LlamaWeights, Weight};
use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

/// `y = x·Wᵀ (+ b)`.
pub struct DeviceLinear {
    pub w: Tensor,
    pub bias: Option<Tensor>,
}

impl DeviceLinear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.w.t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

pub struct DeviceLayer {
    pub attn_norm: Tensor,
    pub mlp_norm: Tensor,
    /// Indexed by `Proj::index()`.
    pub proj: Vec<DeviceLinear>,
}

pub struct DeviceWeights {
    pub embed: Tensor,
    pub layers: Vec<DeviceLayer>,
    pub final_norm: Tensor,
    /// `None` when tied to `embed`.
    pub lm_head: Option<Tensor>,
    pub dtype: DType,
    pub bytes: usize,
}

/// One host matrix `[rows, cols]` as a dense device tensor.
fn place(w: &Weight, (rows, cols): (usize, usize), dev: &Device, dtype: DType) -> Result<Tensor> {
    let t = match w {
        Weight::Dense(v) => Tensor::from_slice(v, (rows, cols), dev)?,
        Weight::Quant(_) => {
            let mut buf = vec![0f32; rows * cols];
            buf.par_chunks_mut(cols)
                .enumerate()
                .for_each(|(i, r)| w.row(i, cols, r));
            Tensor::from_vec(buf, (rows, cols), dev)?
        }
    };
    t.to_dtype(dtype)
}

fn vector(v: &[f32], dev: &Device, dtype: DType) -> Result<Tensor> {
    Tensor::from_slice(v, v.len(), dev)?.to_dtype(dtype)
}

impl DeviceWeights {
    pub fn place(
        host: &LlamaWeights,
        vocab: usize,
        hidden: usize,
        dev: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let embed = place(&host.embed, (vocab, hidden), dev, dtype)?;
        let mut layers = Vec::with_capacity(host.layers.len());
        for l in &host.layers {
            let proj = l
                .proj
                .iter()
                .map(|p| {
                    Ok(DeviceLinear {
                        w: place(&p.w, (p.out, p.inp), dev, dtype)?,
                        bias: p
                            .bias
                            .as_deref()
                            .map(|b| vector(b, dev, dtype))
                            .transpose()?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            layers.push(DeviceLayer {
                attn_norm: vector(&l.attn_norm, dev, dtype)?,
                mlp_norm: vector(&l.mlp_norm, dev, dtype)?,
                proj,
            });
        }
        let lm_head = host
            .lm_head
            .as_ref()
            .map(|w| place(w, (vocab, hidden), dev, dtype))
            .transpose()?;
        let mut w = DeviceWeights {
            embed,
            layers,
            final_norm: vector(&host.final_norm, dev, dtype)?,
            lm_head,
            dtype,
            bytes: 0,
        };
        w.bytes = w.count_bytes();
        Ok(w)
    }

    pub fn lm_head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    fn count_bytes(&self) -> usize {
        let n = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let layers: usize = self
            .layers
            .iter()
            .flat_map(|l| &l.proj)
            .map(|p| n(&p.w))
            .sum();
        layers + n(&self.embed) + self.lm_head.as_ref().map_or(0, n)
    }
}
