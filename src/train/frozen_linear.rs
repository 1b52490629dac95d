//! A frozen projection `y = x W^T` as a candle custom op whose backward returns the input's
//! gradient only (`dy W`). candle's own `matmul` backward also computes the weight's gradient
//! (`x^T dy`), a product as large as the forward itself, even when the weight is a constant: with
//! every base weight frozen, that would be half the backward's work thrown away.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use std::sync::Arc;

/// One frozen weight `[out, in]` (contiguous; f32, or f64 for exact gradient checks).
#[derive(Clone)]
pub struct FrozenLinear {
    op: Arc<Box<dyn CustomOp1 + Send + Sync>>,
    out: usize,
}

struct Op {
    /// `[out, in]`.
    w: Tensor,
}

impl FrozenLinear {
    /// `w` is `[out, in]` row-major (the HF layout).
    pub fn new(w: Tensor) -> candle_core::Result<Self> {
        let (out, _) = w.dims2()?;
        let w = w.contiguous()?;
        Ok(FrozenLinear {
            op: Arc::new(Box::new(Op { w })),
            out,
        })
    }

    /// `x`: `[rows, in]` -> `[rows, out]`; differentiable in `x` only.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1_arc(self.op.clone())
    }

    pub fn out_features(&self) -> usize {
        self.out
    }
}

impl CustomOp1 for Op {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, inp) = l.shape().dims2()?;
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("frozen-linear: non-contiguous input".into()))?;
        let dev = &candle_core::Device::Cpu;
        let x = match s {
            CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], (rows, inp), dev)?,
            CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], (rows, inp), dev)?,
            _ => candle_core::bail!("frozen-linear: f32 or f64 only"),
        };
        let y = x.matmul(&self.w.t()?)?.flatten_all()?;
        let out = match s {
            CpuStorage::F64(_) => CpuStorage::F64(y.to_vec1()?),
            _ => CpuStorage::F32(y.to_vec1()?),
        };
        Ok((out, Shape::from((rows, self.w.dim(0)?))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.matmul(&self.w)?))
    }
}
