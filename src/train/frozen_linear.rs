//! A frozen projection `y = x W^T`. On the CPU it is a candle custom op whose backward returns the
//! input's gradient only (`dy W`). candle's own `matmul` backward also computes the weight's
//! gradient (`x^T dy`), a product as large as the forward itself, even when the weight is a
//! constant: with every base weight frozen, that would be half the backward's work thrown away.
//! On any other device (CUDA) it is the generic path, plain `x.matmul(&w.t())` with `w` a constant
//! on that device: candle's matmul backward then also computes the unused weight gradient (correct,
//! just slower). `generic` selects that path on the CPU too, so tests compare the two there.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use std::sync::Arc;

/// One frozen weight `[out, in]` (contiguous; f32, or f64 for exact gradient checks).
#[derive(Clone)]
pub struct FrozenLinear {
    op: Arc<Box<dyn CustomOp1 + Send + Sync>>,
    /// `Some(w)`: the generic path (`x.matmul(&w.t())`), taken off the CPU.
    generic: Option<Tensor>,
    out: usize,
}

struct Op {
    /// `[out, in]`.
    w: Tensor,
}

impl FrozenLinear {
    /// `w` is `[out, in]` row-major (the HF layout), on the device the inputs will be on: the
    /// custom op on the CPU, the generic path elsewhere.
    pub fn new(w: Tensor) -> candle_core::Result<Self> {
        let generic = !w.device().is_cpu();
        Self::with_path(w, generic)
    }

    /// The same, on the generic path whatever the device (`generic` false: as `new`).
    pub fn with_path(w: Tensor, generic: bool) -> candle_core::Result<Self> {
        let (out, _) = w.dims2()?;
        let w = w.contiguous()?;
        Ok(FrozenLinear {
            generic: generic.then(|| w.clone()),
            op: Arc::new(Box::new(Op { w })),
            out,
        })
    }

    /// `x`: `[rows, in]` -> `[rows, out]`; differentiable in `x` (and, on the generic path,
    /// candle also computes the constant weight's gradient, which nobody reads).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.generic {
            Some(w) => x.matmul(&w.t()?),
            None => x.contiguous()?.apply_op1_arc(self.op.clone()),
        }
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
