//! RoPE launcher (`kernels/rope.cu`), the twin of [`crate::ops::cpu::RopeTable::apply`]. The
//! device table is the CPU table's cos/sin uploaded once, so both paths use identical angles.

use super::device::{ensure, grid, i32_arg, CudaDevice};
use super::GpuFloat;
use crate::ops::cpu::RopeTable;
use crate::Result;
use cudarc::driver::{CudaSlice, PushKernelArg};

pub struct DeviceRopeTable {
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    half: usize,
    max_positions: usize,
}

impl DeviceRopeTable {
    pub fn upload(dev: &CudaDevice, table: &RopeTable) -> Result<Self> {
        let (half, cos, sin) = table.tables();
        ensure("rope_table", half > 0 && !cos.is_empty(), || {
            "empty rope table".into()
        })?;
        Ok(DeviceRopeTable {
            cos: dev.upload(cos)?,
            sin: dev.upload(sin)?,
            half,
            max_positions: table.max_positions(),
        })
    }
}

/// Rotates every head of every row of `x` (`[rows, heads * head_dim]`) in place, row i at
/// `positions[i]`.
pub fn rope<T: GpuFloat>(
    dev: &CudaDevice,
    table: &DeviceRopeTable,
    x: &mut CudaSlice<T>,
    positions: &[usize],
    heads: usize,
) -> Result<()> {
    const OP: &str = "rope";
    let row = heads * 2 * table.half;
    ensure(OP, x.len() == positions.len() * row, || {
        format!(
            "x has {} elements, want {}x{heads}x{}",
            x.len(),
            positions.len(),
            2 * table.half
        )
    })?;
    ensure(
        OP,
        positions.iter().all(|&p| p < table.max_positions),
        || format!("a position is beyond the table's {}", table.max_positions),
    )?;
    dev.check_owned(OP, [x.context(), table.cos.context()])?;
    if positions.is_empty() {
        return Ok(());
    }
    let pos: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
    let pos = dev.upload(&pos)?;
    let (heads_i, half_i) = (
        i32_arg(OP, "heads", heads)?,
        i32_arg(OP, "half", table.half)?,
    );
    let f = dev.function("rope", &format!("rope_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(x)
        .arg(&pos)
        .arg(&table.cos)
        .arg(&table.sin)
        .arg(&heads_i)
        .arg(&half_i);
    // SAFETY: matches `rope_*`; x holds positions.len() rows of heads·2·half elements and every
    // position indexes a row of the [max_positions, half] tables (both checked).
    unsafe { b.launch(grid((positions.len() as u32, 1, 1), 256, 0)) }?;
    Ok(())
}
