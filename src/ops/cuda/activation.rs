//! SiLU-and-mul launcher (`kernels/activation.cu`), the twin of [`crate::ops::cpu::silu_and_mul`].

use super::device::{ensure, grid, CudaDevice};
use super::GpuFloat;
use crate::Result;
use cudarc::driver::{CudaSlice, PushKernelArg};

/// `out = silu(gate) * up`, elementwise; all three have the same length.
pub fn silu_and_mul<T: GpuFloat>(
    dev: &CudaDevice,
    gate: &CudaSlice<T>,
    up: &CudaSlice<T>,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    const OP: &str = "silu_and_mul";
    ensure(OP, gate.len() == up.len() && up.len() == out.len(), || {
        format!(
            "gate/up/out have {}/{}/{} elements",
            gate.len(),
            up.len(),
            out.len()
        )
    })?;
    dev.check_owned(OP, [gate.context(), up.context(), out.context()])?;
    let n = out.len() as i64;
    if n == 0 {
        return Ok(());
    }
    let blocks = (out.len().div_ceil(256)).min(65_535) as u32;
    let f = dev.function("activation", &format!("silu_and_mul_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(out).arg(gate).arg(up).arg(&n);
    // SAFETY: matches `silu_and_mul_*`; the grid-stride loop stays below n = the common length.
    unsafe { b.launch(grid((blocks, 1, 1), 256, 0)) }?;
    Ok(())
}
