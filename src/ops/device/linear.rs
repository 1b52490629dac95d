//! `y = x·Wᵀ` (`x` `[rows, in]`, `W` `[out, in]`, f32) as a candle custom op for the CPU twin:
//! `cpu_fwd` is `ops::cpu::linear`, the CPU executor's own product, whose every element has a fixed
//! reduction order whatever the row count. candle's CPU matmul (gemm) gives bits that depend on the
//! batch's row count, which would make a row's logprobs differ between batches (prefix cache on vs
//! off, a request alone vs batched); on CUDA the executor uses candle's matmul (cuBLAS) instead.

use super::storage::slice;
use crate::ops::cpu::linear;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape};

pub struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice::<f32>(xs, xl)?, slice::<f32>(ws, wl)?);
        let (&[m, k], &[n, k2]) = (xl.dims(), wl.dims()) else {
            bail!("linear: x {:?} w {:?}", xl.dims(), wl.dims())
        };
        if k != k2 {
            bail!("linear: x {:?} w {:?}", xl.dims(), wl.dims());
        }
        let mut y = vec![0f32; m * n];
        linear(x, m, w, n, k, None, &mut y);
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }
}
