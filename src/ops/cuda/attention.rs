//! Paged-attention and KV-write launchers (`kernels/paged_attention.cu`), the device twins of
//! [`crate::ops::cpu::paged_attention`] and [`crate::ops::cpu::write_kv`]. A [`DeviceKvLayer`] is
//! one layer's K and V cache, `[num_blocks, block_size, kv_heads, head_dim]` each; a
//! [`DeviceAttnBatch`] is the batch's block tables and per-row (sequence, position), uploaded once
//! per step and shared by every layer. Block ids and slots are bounds-checked on the host.

use super::device::{ensure, grid, i32_arg, CudaDevice};
use super::GpuFloat;
use crate::ops::cpu::AttnSeq;
use crate::Result;
use cudarc::driver::{CudaSlice, PushKernelArg};

/// One layer's paged K/V cache on the device.
pub struct DeviceKvLayer<T> {
    pub k: CudaSlice<T>,
    pub v: CudaSlice<T>,
    num_blocks: usize,
    block_size: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl<T: GpuFloat + Default> DeviceKvLayer<T> {
    /// A cache whose every element is `fill` (tests poison it with NaN).
    pub fn filled(
        dev: &CudaDevice,
        num_blocks: usize,
        block_size: usize,
        kv_heads: usize,
        head_dim: usize,
        fill: T,
    ) -> Result<Self> {
        ensure(
            "kv_cache",
            num_blocks * block_size * kv_heads * head_dim > 0,
            || "empty KV cache".into(),
        )?;
        let host = vec![fill; num_blocks * block_size * kv_heads * head_dim];
        Ok(DeviceKvLayer {
            k: dev.upload(&host)?,
            v: dev.upload(&host)?,
            num_blocks,
            block_size,
            kv_heads,
            head_dim,
        })
    }

    /// Elements per cached token (`kv_heads * head_dim`).
    pub fn token_stride(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// The attention layout of one batch: `[seqs, max_blocks]` block tables and, per query row, its
/// sequence and position (it attends to positions `0..=pos`).
pub struct DeviceAttnBatch {
    block_tables: CudaSlice<i32>,
    max_blocks: usize,
    row_seq: CudaSlice<i32>,
    row_pos: CudaSlice<i32>,
    rows: usize,
    /// Largest block id referenced, checked against the cache at launch.
    max_block_id: usize,
    block_size: usize,
}

impl DeviceAttnBatch {
    /// Uploads `seqs` (the CPU twin's description of the same batch). Rows must be contiguous from
    /// 0 in sequence order and every position must be covered by the block table.
    pub fn upload(dev: &CudaDevice, seqs: &[AttnSeq], block_size: usize) -> Result<Self> {
        const OP: &str = "attn_batch";
        ensure(OP, block_size > 0, || "block_size 0".into())?;
        let max_blocks = seqs
            .iter()
            .map(|s| s.block_table.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let (mut tables, mut row_seq, mut row_pos) = (Vec::new(), Vec::new(), Vec::new());
        let mut max_block_id = 0;
        for (i, s) in seqs.iter().enumerate() {
            ensure(OP, s.row_start == row_seq.len(), || {
                format!(
                    "sequence {i} starts at row {}, want {}",
                    s.row_start,
                    row_seq.len()
                )
            })?;
            ensure(OP, s.rows <= s.context_len, || {
                format!("sequence {i}: {} rows > context {}", s.rows, s.context_len)
            })?;
            ensure(
                OP,
                s.context_len <= s.block_table.len() * block_size,
                || {
                    format!(
                        "sequence {i}: context {} beyond its block table",
                        s.context_len
                    )
                },
            )?;
            let mut table: Vec<i32> = s.block_table.iter().map(|&b| b as i32).collect();
            max_block_id =
                max_block_id.max(s.block_table.iter().copied().max().unwrap_or(0) as usize);
            table.resize(max_blocks, 0);
            tables.extend(table);
            for r in 0..s.rows {
                row_seq.push(i32_arg(OP, "sequence", i)?);
                row_pos.push(i32_arg(OP, "position", s.context_len - s.rows + r)?);
            }
        }
        Ok(DeviceAttnBatch {
            block_tables: dev.upload(&tables)?,
            max_blocks,
            rows: row_seq.len(),
            row_seq: dev.upload(&row_seq)?,
            row_pos: dev.upload(&row_pos)?,
            max_block_id,
            block_size,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// Writes row i of `k`/`v` (`[rows, kv_heads * head_dim]`) to cache slot `slots[i]`.
pub fn write_kv<T: GpuFloat + Default>(
    dev: &CudaDevice,
    k: &CudaSlice<T>,
    v: &CudaSlice<T>,
    slots: &[usize],
    kv: &mut DeviceKvLayer<T>,
) -> Result<()> {
    const OP: &str = "write_kv";
    let stride = kv.token_stride();
    let capacity = kv.num_blocks * kv.block_size;
    ensure(
        OP,
        k.len() == slots.len() * stride && v.len() == k.len(),
        || {
            format!(
                "k/v have {}/{} elements, want {}x{stride}",
                k.len(),
                v.len(),
                slots.len()
            )
        },
    )?;
    ensure(OP, slots.iter().all(|&s| s < capacity), || {
        format!("a slot is beyond the cache's {capacity} slots")
    })?;
    dev.check_owned(
        OP,
        [k.context(), v.context(), kv.k.context(), kv.v.context()],
    )?;
    if slots.is_empty() {
        return Ok(());
    }
    let slots: Vec<i64> = slots.iter().map(|&s| s as i64).collect();
    let slots_d = dev.upload(&slots)?;
    let stride_i = i32_arg(OP, "stride", stride)?;
    let f = dev.function(
        "paged_attention",
        &format!("reshape_and_cache_{}", T::SUFFIX),
    )?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(k)
        .arg(v)
        .arg(&slots_d)
        .arg(&stride_i)
        .arg(&mut kv.k)
        .arg(&mut kv.v);
    // SAFETY: matches `reshape_and_cache_*`; k/v hold slots.len() rows of `stride` elements and
    // every slot < num_blocks · block_size (checked), so reads and writes stay in bounds.
    unsafe { b.launch(grid((slots.len() as u32, 1, 1), 256, 0)) }?;
    Ok(())
}

/// `out[row, head] = softmax(q·Kᵀ/√d)·V` over the row's causal context, read through the block
/// tables. `q` and `out` are `[rows, heads * head_dim]`.
pub fn paged_attention<T: GpuFloat + Default>(
    dev: &CudaDevice,
    q: &CudaSlice<T>,
    batch: &DeviceAttnBatch,
    kv: &DeviceKvLayer<T>,
    heads: usize,
    out: &mut CudaSlice<T>,
) -> Result<()> {
    const OP: &str = "paged_attention";
    let hd = kv.head_dim;
    ensure(OP, hd.is_multiple_of(32) && hd <= 256, || {
        format!("head_dim {hd}: the kernel needs a multiple of 32, at most 256")
    })?;
    ensure(OP, heads > 0 && heads.is_multiple_of(kv.kv_heads), || {
        format!(
            "{heads} heads is not a multiple of {} kv heads",
            kv.kv_heads
        )
    })?;
    ensure(
        OP,
        q.len() == batch.rows * heads * hd && out.len() == q.len(),
        || {
            format!(
                "q/out have {}/{} elements, want {}x{heads}x{hd}",
                q.len(),
                out.len(),
                batch.rows
            )
        },
    )?;
    ensure(
        OP,
        batch.block_size == kv.block_size && batch.max_block_id < kv.num_blocks,
        || {
            format!(
                "batch uses block size {} and block {}; cache has {} blocks of {}",
                batch.block_size, batch.max_block_id, kv.num_blocks, kv.block_size
            )
        },
    )?;
    dev.check_owned(
        OP,
        [q.context(), out.context(), kv.k.context(), kv.v.context()],
    )?;
    dev.check_owned(OP, [batch.block_tables.context(), batch.row_seq.context()])?;
    if batch.rows == 0 {
        return Ok(());
    }
    let (max_blocks, heads_i, kvh_i, hd_i, bs_i) = (
        i32_arg(OP, "max_blocks", batch.max_blocks)?,
        i32_arg(OP, "heads", heads)?,
        i32_arg(OP, "kv_heads", kv.kv_heads)?,
        i32_arg(OP, "head_dim", hd)?,
        i32_arg(OP, "block_size", kv.block_size)?,
    );
    let scale = 1.0 / (hd as f32).sqrt();
    let f = dev.function("paged_attention", &format!("paged_attention_{}", T::SUFFIX))?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(out)
        .arg(q)
        .arg(&kv.k)
        .arg(&kv.v)
        .arg(&batch.block_tables)
        .arg(&max_blocks);
    b.arg(&batch.row_seq)
        .arg(&batch.row_pos)
        .arg(&heads_i)
        .arg(&kvh_i)
        .arg(&hd_i);
    b.arg(&bs_i).arg(&scale);
    // SAFETY: matches `paged_attention_*` (4 warps per block, as the kernel's PA_WARPS assumes).
    // `DeviceAttnBatch::upload` proved every row's positions are covered by its block table, and
    // the check above that every block id < num_blocks, so every cache read is in bounds; q/out
    // are [rows, heads, head_dim] with head_dim a multiple of 32 and <= 256 (the register tile).
    unsafe { b.launch(grid((batch.rows as u32, heads as u32, 1), 128, 0)) }?;
    Ok(())
}
