//! RMSNorm launchers (`kernels/norm.cu`), twins of [`crate::ops::cpu::rms_norm`] and of the
//! residual add + norm pair in `model::llama`. One block per row.

use super::device::{ensure, grid, i32_arg, CudaDevice};
use super::GpuFloat;
use crate::Result;
use cudarc::driver::{CudaSlice, PushKernelArg};

fn threads_for(d: usize) -> u32 {
    (d.div_ceil(32) * 32).clamp(32, 1024) as u32
}

fn check_rows<T>(op: &'static str, w: &CudaSlice<T>, lens: &[usize]) -> Result<usize> {
    let d = w.len();
    ensure(
        op,
        d > 0 && lens.iter().all(|&l| l == lens[0] && l % d == 0),
        || format!("buffers of {lens:?} elements for rows of {d}"),
    )?;
    Ok(lens[0] / d)
}

/// `y[row] = w * x[row] / sqrt(mean(x[row]²) + eps)`; `x`, `y` are `[rows, w.len()]`.
pub fn rms_norm<T: GpuFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    w: &CudaSlice<T>,
    eps: f32,
    y: &mut CudaSlice<T>,
) -> Result<()> {
    const OP: &str = "rms_norm";
    let rows = check_rows(OP, w, &[x.len(), y.len()])?;
    dev.check_owned(OP, [x.context(), w.context(), y.context()])?;
    if rows == 0 {
        return Ok(());
    }
    let d = i32_arg(OP, "d", w.len())?;
    let f = dev.function("norm", &format!("rms_norm_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(y).arg(x).arg(w).arg(&d).arg(&eps);
    // SAFETY: matches `rms_norm_*`; x and y hold `rows` rows of d = w.len() elements (checked);
    // the block size is a multiple of 32 and <= 1024, as `block_sum` requires.
    unsafe { b.launch(grid((rows as u32, 1, 1), threads_for(w.len()), 0)) }?;
    Ok(())
}

/// `residual += x` (stored in T), then `y = rms_norm(residual)`.
pub fn fused_add_rms_norm<T: GpuFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    residual: &mut CudaSlice<T>,
    w: &CudaSlice<T>,
    eps: f32,
    y: &mut CudaSlice<T>,
) -> Result<()> {
    const OP: &str = "fused_add_rms_norm";
    let rows = check_rows(OP, w, &[x.len(), residual.len(), y.len()])?;
    dev.check_owned(
        OP,
        [x.context(), residual.context(), w.context(), y.context()],
    )?;
    if rows == 0 {
        return Ok(());
    }
    let d = i32_arg(OP, "d", w.len())?;
    let f = dev.function("norm", &format!("fused_add_rms_norm_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(y).arg(residual).arg(x).arg(w).arg(&d).arg(&eps);
    // SAFETY: matches `fused_add_rms_norm_*`; all three row buffers hold `rows` rows of d
    // elements (checked); y and residual are distinct buffers (both borrowed mutably here).
    unsafe { b.launch(grid((rows as u32, 1, 1), threads_for(w.len()), 0)) }?;
    Ok(())
}
