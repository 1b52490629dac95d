//! Dense projection launcher (`kernels/linear.cu`), the twin of [`crate::ops::cpu::linear`]:
//! `y[m, n] = x[m, k] · w[n, k]ᵀ (+ bias[n])`, shaped for decode (W streamed once per 8 rows).

use super::device::{ensure, grid, i32_arg, CudaDevice};
use super::GpuFloat;
use crate::Result;
use cudarc::driver::{CudaSlice, PushKernelArg};

const OP: &str = "linear";
/// Output features per block (one per warp) and rows per warp, as in kernels/linear.cu.
const WARPS: usize = 8;
const ROWS_PER_WARP: usize = 8;

/// `y = x · wᵀ (+ bias)`; `x` is `[m, k]`, `w` `[n, k]`, `y` `[m, n]`, `bias` `[n]`.
pub fn linear<T: GpuFloat>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    w: &CudaSlice<T>,
    n: usize,
    k: usize,
    bias: Option<&CudaSlice<T>>,
    y: &mut CudaSlice<T>,
) -> Result<()> {
    ensure(
        OP,
        n > 0 && k > 0 && w.len() == n * k && x.len().is_multiple_of(k),
        || {
            format!(
                "w has {} elements (want {n}x{k}), x has {}",
                w.len(),
                x.len()
            )
        },
    )?;
    let m = x.len() / k;
    ensure(OP, y.len() == m * n, || {
        format!("y has {} elements, want {m}x{n}", y.len())
    })?;
    ensure(OP, bias.is_none_or(|b| b.len() == n), || {
        format!("bias is not [{n}]")
    })?;
    ensure(OP, m.div_ceil(ROWS_PER_WARP) <= 65_535, || {
        format!("{m} rows exceed grid.y")
    })?;
    dev.check_owned(OP, [x.context(), w.context(), y.context()])?;
    dev.check_owned(OP, bias.map(|b| b.context()))?;
    if m == 0 {
        return Ok(());
    }
    let (m_i, n_i, k_i) = (
        i32_arg(OP, "m", m)?,
        i32_arg(OP, "n", n)?,
        i32_arg(OP, "k", k)?,
    );
    let has_bias = i32::from(bias.is_some());
    let f = dev.function("linear", &format!("linear_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&f);
    // Without a bias the kernel never reads its bias pointer; w stands in for it.
    b.arg(y).arg(x).arg(w).arg(bias.unwrap_or(w)).arg(&has_bias);
    b.arg(&m_i).arg(&n_i).arg(&k_i);
    let blocks = (
        n.div_ceil(WARPS) as u32,
        m.div_ceil(ROWS_PER_WARP) as u32,
        1,
    );
    // SAFETY: matches `linear_*` (8 warps per block, 8 rows per warp, as the kernel assumes); x, w,
    // y and bias have the checked [m,k], [n,k], [m,n], [n] sizes, so every read and write is in
    // bounds; the 16-byte loads are aligned because each buffer starts at a fresh allocation
    // (256-byte aligned) and the kernel takes them only when k·sizeof(T) is a multiple of 16.
    unsafe { b.launch(grid(blocks, (WARPS * 32) as u32, 0)) }?;
    Ok(())
}
