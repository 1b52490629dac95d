//! BGMV launcher (`kernels/bgmv.cu`) for decode: one row per sequence, each with at most one
//! adapter per launch. The device twin of [`crate::ops::cpu::sgmv`] with one-row segments of one
//! term. Two device-resident pieces feed a launch, so the hot path uploads nothing:
//! - [`DeviceLoraTable`]: the pool's pointer table for one (layer, projection): slot -> A, B, rank;
//!   built when adapters page in, shared by every step;
//! - [`BgmvIndex`]: one step's (row, slot, coeff) entries, shared by every layer and projection.
//!
//! Rows without an adapter are simply not listed; listed rows are distinct (checked), so no two
//! blocks write the same output row. [`bgmv`] builds both on the fly (tests, one-off calls).

use super::device::{ensure, grid, i32_arg, CudaDevice};
use super::{DeviceLora, GpuFloat};
use crate::Result;
use cudarc::driver::{CudaSlice, PushKernelArg};
use std::collections::HashMap;
use std::marker::PhantomData;

const OP: &str = "bgmv";
const THREADS: u32 = 256;
/// The expand kernel stages a shrunk row in shared memory (48 KiB without opt-in).
const MAX_RANK: usize = 4096;

/// Batch row `row` gets `coeff · (x[row]·Aᵀ)·Bᵀ` of `lora` added.
pub struct DecodeRow<'a, T> {
    pub row: usize,
    pub lora: &'a DeviceLora<T>,
    pub coeff: f32,
}

/// Slot table of one (layer, projection): device addresses of each slot's A and B, and its rank.
/// The table does not own the weights: whoever owns the pool keeps a slot's `DeviceLora` alive
/// (and the table unchanged) while launches that use the table may still run.
pub struct DeviceLoraTable<T> {
    slot_a: CudaSlice<u64>,
    slot_b: CudaSlice<u64>,
    slot_rank: CudaSlice<i32>,
    slots: usize,
    max_rank: usize,
    in_dim: usize,
    out_dim: usize,
    _t: PhantomData<T>,
}

impl<T: GpuFloat + Default> DeviceLoraTable<T> {
    pub fn new(dev: &CudaDevice, slots: &[&DeviceLora<T>]) -> Result<Self> {
        ensure(OP, !slots.is_empty(), || "empty slot table".into())?;
        let (in_dim, out_dim) = (slots[0].in_dim(), slots[0].out_dim());
        let (mut a, mut b, mut rank) = (Vec::new(), Vec::new(), Vec::new());
        for l in slots {
            ensure(OP, l.in_dim() == in_dim && l.out_dim() == out_dim, || {
                format!(
                    "slot is {}->{}, the table {in_dim}->{out_dim}",
                    l.in_dim(),
                    l.out_dim()
                )
            })?;
            ensure(OP, l.rank() <= MAX_RANK, || {
                format!("rank {} > {MAX_RANK}", l.rank())
            })?;
            dev.check_owned(OP, [l.a().context(), l.b().context()])?;
            let (pa, pb) = l.addrs(dev.stream());
            a.push(pa);
            b.push(pb);
            rank.push(i32_arg(OP, "rank", l.rank())?);
        }
        Ok(DeviceLoraTable {
            slot_a: dev.upload(&a)?,
            slot_b: dev.upload(&b)?,
            slot_rank: dev.upload(&rank)?,
            slots: slots.len(),
            max_rank: slots.iter().map(|l| l.rank()).max().unwrap_or(1),
            in_dim,
            out_dim,
            _t: PhantomData,
        })
    }
}

/// One decode step's LoRA entries `(row, slot, coeff)` over a batch of `rows` rows.
pub struct BgmvIndex {
    e_row: CudaSlice<i32>,
    e_slot: CudaSlice<i32>,
    e_coeff: CudaSlice<f32>,
    entries: usize,
    rows: usize,
    max_slot: usize,
}

impl BgmvIndex {
    pub fn new(dev: &CudaDevice, rows: usize, entries: &[(usize, usize, f32)]) -> Result<Self> {
        let mut seen = vec![false; rows];
        let (mut e_row, mut e_slot, mut e_coeff) = (Vec::new(), Vec::new(), Vec::new());
        for &(row, slot, coeff) in entries {
            ensure(OP, row < rows && !seen[row], || {
                format!("row {row} is out of {rows} rows or listed twice")
            })?;
            seen[row] = true;
            e_row.push(i32_arg(OP, "row", row)?);
            e_slot.push(i32_arg(OP, "slot", slot)?);
            e_coeff.push(coeff);
        }
        Ok(BgmvIndex {
            e_row: dev.upload(&e_row)?,
            e_slot: dev.upload(&e_slot)?,
            e_coeff: dev.upload(&e_coeff)?,
            entries: entries.len(),
            rows,
            max_slot: entries.iter().map(|e| e.1).max().unwrap_or(0),
        })
    }
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
    ensure(OP, in_dim > 0 && x.len().is_multiple_of(in_dim), || {
        format!("x has {} elements for in_dim {in_dim}", x.len())
    })?;
    if entries.is_empty() {
        return Ok(());
    }
    // Slot table: one entry per distinct adapter (keyed by its A address).
    let (mut slot_of, mut slots) = (HashMap::new(), Vec::new());
    let mut index = Vec::with_capacity(entries.len());
    for e in entries {
        let key = e.lora as *const DeviceLora<T>;
        let slot = *slot_of.entry(key).or_insert_with(|| {
            slots.push(e.lora);
            slots.len() - 1
        });
        index.push((e.row, slot, e.coeff));
    }
    let table = DeviceLoraTable::new(dev, &slots)?;
    ensure(
        OP,
        table.in_dim == in_dim && table.out_dim == out_dim,
        || {
            format!(
                "LoRA is {}->{}, the projection {in_dim}->{out_dim}",
                table.in_dim, table.out_dim
            )
        },
    )?;
    let index = BgmvIndex::new(dev, x.len() / in_dim, &index)?;
    bgmv_indexed(dev, x, &index, &table, y)
}

/// The hot-path form: `y += LoRA(x)` for the step's `index` through the pool's `table`; nothing
/// is uploaded, only the f32 scratch is allocated (stream-ordered).
pub fn bgmv_indexed<T: GpuFloat + Default>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    index: &BgmvIndex,
    table: &DeviceLoraTable<T>,
    y: &mut CudaSlice<T>,
) -> Result<()> {
    let (in_dim, out_dim, rows) = (table.in_dim, table.out_dim, index.rows);
    ensure(
        OP,
        x.len() == rows * in_dim && y.len() == rows * out_dim,
        || {
            format!(
                "x/y have {}/{} elements, want {rows}x{in_dim} and {rows}x{out_dim}",
                x.len(),
                y.len()
            )
        },
    )?;
    ensure(
        OP,
        index.entries == 0 || index.max_slot < table.slots,
        || format!("slot {} beyond the table's {}", index.max_slot, table.slots),
    )?;
    dev.check_owned(OP, [x.context(), y.context(), table.slot_a.context()])?;
    dev.check_owned(OP, [index.e_row.context()])?;
    if index.entries == 0 {
        return Ok(());
    }
    let s = dev.zeros::<f32>(index.entries * table.max_rank)?;
    let (in_i, out_i, stride) = (
        i32_arg(OP, "in_dim", in_dim)?,
        i32_arg(OP, "out_dim", out_dim)?,
        i32_arg(OP, "rank", table.max_rank)?,
    );
    let n = index.entries as u32;

    let shrink = dev.function("bgmv", &format!("bgmv_shrink_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&shrink);
    b.arg(x).arg(&in_i).arg(&index.e_row).arg(&index.e_slot);
    b.arg(&table.slot_a)
        .arg(&table.slot_rank)
        .arg(&s)
        .arg(&stride);
    // SAFETY: argument order/types match `bgmv_shrink_*` (kernels/bgmv.cu). Every e_row < rows and
    // every slot < table.slots (checked); each slot's A is [rank, in_dim] with rank <= max_rank
    // (checked when the table was built), and s has entries · max_rank floats: all in bounds.
    unsafe { b.launch(grid((n, 1, 1), THREADS, 0)) }?;

    let expand = dev.function("bgmv", &format!("bgmv_expand_{}", T::SUFFIX))?;
    let tiles = out_dim.div_ceil(THREADS as usize) as u32;
    let mut b = dev.stream().launch_builder(&expand);
    b.arg(y)
        .arg(&out_i)
        .arg(&index.e_row)
        .arg(&index.e_slot)
        .arg(&index.e_coeff);
    b.arg(&table.slot_b)
        .arg(&table.slot_rank)
        .arg(&s)
        .arg(&stride);
    let shared = (table.max_rank * 4) as u32;
    // SAFETY: matches `bgmv_expand_*`; rows are distinct (checked in BgmvIndex::new), so no two
    // blocks write the same y element; B is [out_dim, rank]; shared memory holds max_rank floats.
    unsafe { b.launch(grid((n, tiles, 1), THREADS, shared)) }?;
    Ok(())
}
