//! The model's weights placed on a candle device: by default every matrix as a dense `[out, in]`
//! tensor in the executor's compute dtype (f32 on the CPU twin, so it computes what the CPU f32
//! executor computes; GGUF quant blocks are dequantized row by row with the same routine the CPU
//! executor's embedding uses), norms as vectors. With `--qmatmul` the block-quantized projections
//! (GGUF Q4_0…Q6_K) stay in their blocks as candle `QTensor`s on the device and are multiplied by
//! candle's `QMatMul`, which rounds the activations to q8_1 for its integer kernels: less accurate
//! than the default (issue 22), a quarter to a half the weight bytes. The embedding (and a tied
//! output head) stay dense. Shapes were checked against the config at load.

use crate::model::{LlamaWeights, Weight};
use crate::ops::device::Linear;
use candle_core::quantized::{ggml_file::qtensor_from_ggml, QMatMul};
use candle_core::{DType, Device, Module, Result, Tensor};
use rayon::prelude::*;

/// A projection's matrix on the device.
pub enum LinearWeight {
    /// `[out, in]` in the compute dtype.
    Dense(Tensor),
    /// GGUF blocks as a candle `QTensor`, with its bytes.
    Quant(QMatMul, usize),
}

/// `y = x·Wᵀ (+ b)`.
pub struct DeviceLinear {
    pub w: LinearWeight,
    pub bias: Option<Tensor>,
}

impl DeviceLinear {
    /// candle's matmul on a GPU; on the CPU twin the CPU executor's batch-invariant product
    /// (`ops::device::Linear`: candle's CPU gemm bits depend on the row count); candle's
    /// `QMatMul` (f32 activations in and out) for quantized weights.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.w {
            LinearWeight::Quant(q, _) => {
                q.forward(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?
            }
            LinearWeight::Dense(w) if x.device().is_cpu() && x.dtype() == DType::F32 => {
                x.apply_op2_no_bwd(w, &Linear)?
            }
            LinearWeight::Dense(w) => x.matmul(&w.t()?)?,
        };
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

/// One projection: its GGUF blocks as a `QMatMul` when `quant` and the matrix is block-quantized,
/// else dense.
fn place_linear(
    w: &Weight,
    shape: (usize, usize),
    dev: &Device,
    dtype: DType,
    quant: bool,
) -> Result<LinearWeight> {
    match w {
        Weight::Quant(q) if quant && !q.format().is_float() => {
            let bytes: Vec<u8> = (0..q.rows()).flat_map(|i| q.row(i).into_owned()).collect();
            let t =
                qtensor_from_ggml(q.format().ggml_dtype(), &bytes, vec![shape.0, shape.1], dev)?;
            Ok(LinearWeight::Quant(QMatMul::from_qtensor(t)?, bytes.len()))
        }
        _ => Ok(LinearWeight::Dense(place(w, shape, dev, dtype)?)),
    }
}

/// The bytes `w` takes on the device (`place_linear` with the same arguments).
pub fn linear_bytes(w: &Weight, (rows, cols): (usize, usize), dtype: DType, quant: bool) -> usize {
    match w {
        Weight::Quant(q) if quant && !q.format().is_float() => rows * q.format().row_bytes(cols),
        _ => rows * cols * dtype.size_in_bytes(),
    }
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
        quant: bool,
    ) -> Result<Self> {
        let embed = place(&host.embed, (vocab, hidden), dev, dtype)?;
        let mut layers = Vec::with_capacity(host.layers.len());
        for l in &host.layers {
            let proj = l
                .proj
                .iter()
                .map(|p| {
                    Ok(DeviceLinear {
                        w: place_linear(&p.w, (p.out, p.inp), dev, dtype, quant)?,
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

    /// Bytes the weights take on the device.
    pub(super) fn count_bytes(&self) -> usize {
        let n = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let layers: usize = self
            .layers
            .iter()
            .flat_map(|l| &l.proj)
            .map(|p| match &p.w {
                LinearWeight::Dense(t) => n(t),
                LinearWeight::Quant(_, b) => *b,
            })
            .sum();
        layers + n(&self.embed) + self.lm_head.as_ref().map_or(0, n)
    }
}
