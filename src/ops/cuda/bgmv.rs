//! BGMV launcher (`kernels/bgmv.cu`) for decode: one row per sequence, each with at most one
//! adapter per launch. The device twin of [`crate::ops::cpu::sgmv`] with one-row segments of one
//! term. The distinct adapters of the batch form the launch's slot table (the pool's pointer
//! table); rows without an adapter are simply not listed. Listed rows must be distinct.

use super::device::{ensure, grid, i32_arg, CudaDevice};
use super::{DeviceLora, GpuFloat};
use crate::Result;
use cudarc::driver::{CudaSlice, PushKernelArg};
use std::collections::HashMap;

const OP: &str = "bgmv";
const THREADS: u32 = 256;
const MAX_RANK: usize = 4096;

/// Batch row `row` gets `coeff · (x[row]·Aᵀ)·Bᵀ` of `lora` added.
pub struct DecodeRow<'a, T> {
    pub row: usize,
    pub lora: &'a DeviceLora<T>,
    pub coeff: f32,
}

/// Adds each listed row's LoRA delta to `y` (`[rows, out_dim]`), reading `x` (`[rows, in_dim]`).
pub fn bgmv<T: GpuFloat + Default>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    in_dim: usize,
    entries: &[DecodeRow<T>],
    out_dim: usize,
    y: &mut CudaSlice<T>,
) -> Result<()> {
    ensure(
        OP,
        in_dim > 0 && out_dim > 0 && x.len().is_multiple_of(in_dim),
        || format!("x has {} elements for in_dim {in_dim}", x.len()),
    )?;
    let rows = x.len() / in_dim;
    ensure(OP, y.len() == rows * out_dim, || {
        format!("y has {} elements, want {rows}x{out_dim}", y.len())
    })?;
    dev.check_owned(OP, [x.context(), y.context()])?;
    if entries.is_empty() {
        return Ok(());
    }
    let mut seen = vec![false; rows];
    // Slot table: one entry per distinct adapter (keyed by its A address).
    let (mut slot_of, mut slot_a, mut slot_b, mut slot_rank) =
        (HashMap::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut e_row, mut e_slot, mut e_coeff) = (Vec::new(), Vec::new(), Vec::new());
    let mut max_rank = 0;
    for e in entries {
        ensure(OP, e.row < rows && !seen[e.row], || {
            format!("row {} is out of {rows} rows or listed twice", e.row)
        })?;
        seen[e.row] = true;
        let l = e.lora;
        ensure(OP, l.in_dim() == in_dim && l.out_dim() == out_dim, || {
            format!(
                "LoRA is {}->{}, the projection {in_dim}->{out_dim}",
                l.in_dim(),
                l.out_dim()
            )
        })?;
        dev.check_owned(OP, [l.a().context(), l.b().context()])?;
        let (a, b) = l.addrs(dev.stream());
        let slot = *slot_of.entry(a).or_insert_with(|| {
            slot_a.push(a);
            slot_b.push(b);
            slot_rank.push(l.rank() as i32);
            slot_a.len() - 1
        });
        max_rank = max_rank.max(l.rank());
        e_row.push(i32_arg(OP, "row", e.row)?);
        e_slot.push(i32_arg(OP, "slot", slot)?);
        e_coeff.push(e.coeff);
    }
    // The expand kernel stages a shrunk row in shared memory (48 KiB without opt-in).
    ensure(OP, max_rank <= MAX_RANK, || {
        format!("rank {max_rank} > {MAX_RANK}")
    })?;
    let s = dev.zeros::<f32>(entries.len() * max_rank)?;
    let (e_row, e_slot, e_coeff) = (
        dev.upload(&e_row)?,
        dev.upload(&e_slot)?,
        dev.upload(&e_coeff)?,
    );
    let (slot_a, slot_b, slot_rank) = (
        dev.upload(&slot_a)?,
        dev.upload(&slot_b)?,
        dev.upload(&slot_rank)?,
    );
    let (in_i, out_i, stride) = (
        i32_arg(OP, "in_dim", in_dim)?,
        i32_arg(OP, "out_dim", out_dim)?,
        i32_arg(OP, "rank", max_rank)?,
    );
    let n = entries.len() as u32;

    let shrink = dev.function("bgmv", &format!("bgmv_shrink_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&shrink);
    b.arg(x)
        .arg(&in_i)
        .arg(&e_row)
        .arg(&e_slot)
        .arg(&slot_a)
        .arg(&slot_rank);
    b.arg(&s).arg(&stride);
    // SAFETY: argument order/types match `bgmv_shrink_*` (kernels/bgmv.cu). Every e_row < rows
    // (checked), every slot indexes the slot table just built, each A is [rank, in_dim] (checked at
    // upload and above), and s has n · max_rank floats with rank <= max_rank: all accesses in bounds.
    unsafe { b.launch(grid((n, 1, 1), THREADS, 0)) }?;

    let expand = dev.function("bgmv", &format!("bgmv_expand_{}", T::SUFFIX))?;
    let tiles = out_dim.div_ceil(THREADS as usize) as u32;
    let mut b = dev.stream().launch_builder(&expand);
    b.arg(y)
        .arg(&out_i)
        .arg(&e_row)
        .arg(&e_slot)
        .arg(&e_coeff)
        .arg(&slot_b);
    b.arg(&slot_rank).arg(&s).arg(&stride);
    // SAFETY: matches `bgmv_expand_*`; rows are distinct (checked) so no two blocks write the same
    // y element; B is [out_dim, rank]; the dynamic shared memory holds max_rank floats.
    unsafe { b.launch(grid((n, tiles, 1), THREADS, (max_rank * 4) as u32)) }?;
    Ok(())
}
