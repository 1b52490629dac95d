//! SGMV launcher (`kernels/sgmv.cu`), the device twin of [`crate::ops::cpu::sgmv`]: adds every
//! segment's LoRA delta to `y`. Segments must be disjoint and in bounds, every term's dimensions
//! must match `in_dim`/`out_dim`; the pointer tables and the unpadded f32 scratch (Σ rows·rank) are
//! built here, then two launches (shrink, expand) cover the whole batch.

use super::device::{ensure, grid, i32_arg, CudaDevice};
use super::{DeviceSegment, GpuFloat};
use crate::Result;
use cudarc::driver::{CudaSlice, PushKernelArg};

const OP: &str = "sgmv";
const THREADS: u32 = 256;
/// Upper bound on the row/work chunks of one segment or term (grid.y / grid.z).
const MAX_CHUNKS: usize = 64;

/// Host-side tables of one launch, in the layout documented in `kernels/sgmv.cu`.
#[derive(Default)]
struct Tables {
    seg_rows: Vec<i32>,
    seg_terms: Vec<i32>,
    term_seg: Vec<i32>,
    term_a: Vec<u64>,
    term_b: Vec<u64>,
    term_rank: Vec<i32>,
    term_coeff: Vec<f32>,
    term_s_off: Vec<i64>,
    /// Largest rows·rank of a term and largest segment, for the grid shape.
    max_work: usize,
    max_rows: usize,
    /// Floats of scratch: Σ over terms of rows(segment) · rank.
    s_total: usize,
}

fn check<T: GpuFloat>(
    x: &CudaSlice<T>,
    in_dim: usize,
    segments: &[DeviceSegment<T>],
    out_dim: usize,
    y: &CudaSlice<T>,
) -> Result<usize> {
    ensure(OP, in_dim > 0 && out_dim > 0, || "zero dimension".into())?;
    ensure(OP, x.len().is_multiple_of(in_dim), || {
        format!(
            "x has {} elements, not a multiple of in_dim {in_dim}",
            x.len()
        )
    })?;
    let rows = x.len() / in_dim;
    ensure(OP, y.len() == rows * out_dim, || {
        format!("y has {} elements, want {rows}x{out_dim}", y.len())
    })?;
    let mut prev_end = 0;
    for s in segments {
        // Sorted and disjoint: two segments writing one row would race in the expand kernel.
        ensure(
            OP,
            s.rows.start >= prev_end && s.rows.start < s.rows.end,
            || format!("segment {:?} is empty, overlaps or is out of order", s.rows),
        )?;
        ensure(OP, s.rows.end <= rows, || {
            format!("segment {:?} beyond {rows} rows", s.rows)
        })?;
        prev_end = s.rows.end;
        for t in &s.terms {
            ensure(
                OP,
                t.lora.in_dim() == in_dim && t.lora.out_dim() == out_dim,
                || {
                    format!(
                        "LoRA is {}->{}, the projection {in_dim}->{out_dim}",
                        t.lora.in_dim(),
                        t.lora.out_dim()
                    )
                },
            )?;
        }
    }
    Ok(rows)
}

fn tables<T: GpuFloat>(dev: &CudaDevice, segments: &[DeviceSegment<T>]) -> Result<Tables> {
    let mut t = Tables::default();
    let mut s_off = 0usize;
    t.seg_terms.push(0);
    for s in segments.iter().filter(|s| !s.terms.is_empty()) {
        let seg = i32_arg(OP, "segments", t.seg_rows.len() / 2)?;
        let n = s.rows.len();
        t.seg_rows.push(i32_arg(OP, "row", s.rows.start)?);
        t.seg_rows.push(i32_arg(OP, "row", s.rows.end)?);
        t.max_rows = t.max_rows.max(n);
        for term in &s.terms {
            dev.check_owned(OP, [term.lora.a().context(), term.lora.b().context()])?;
            let (a, b) = term.lora.addrs(dev.stream());
            t.term_seg.push(seg);
            t.term_a.push(a);
            t.term_b.push(b);
            t.term_rank.push(i32_arg(OP, "rank", term.lora.rank())?);
            t.term_coeff.push(term.coeff);
            t.term_s_off.push(s_off as i64);
            s_off += n * term.lora.rank();
            t.max_work = t.max_work.max(n * term.lora.rank());
        }
        t.seg_terms.push(i32_arg(OP, "terms", t.term_seg.len())?);
    }
    t.s_total = s_off;
    Ok(t)
}

/// `y[rows] += Σ_terms coeff · (x[rows]·Aᵀ)·Bᵀ` for every segment, in one shrink and one expand
/// launch. `x` is `[rows, in_dim]`, `y` is `[rows, out_dim]`.
pub fn sgmv<T: GpuFloat + Default>(
    dev: &CudaDevice,
    x: &CudaSlice<T>,
    in_dim: usize,
    segments: &[DeviceSegment<T>],
    out_dim: usize,
    y: &mut CudaSlice<T>,
) -> Result<()> {
    check(x, in_dim, segments, out_dim, y)?;
    dev.check_owned(OP, [x.context(), y.context()])?;
    let t = tables(dev, segments)?;
    if t.term_seg.is_empty() {
        return Ok(());
    }
    let s = dev.zeros::<f32>(t.s_total)?;
    let (seg_rows, seg_terms, term_seg) = (
        dev.upload(&t.seg_rows)?,
        dev.upload(&t.seg_terms)?,
        dev.upload(&t.term_seg)?,
    );
    let (term_a, term_b) = (dev.upload(&t.term_a)?, dev.upload(&t.term_b)?);
    let (term_rank, term_coeff, term_s_off) = (
        dev.upload(&t.term_rank)?,
        dev.upload(&t.term_coeff)?,
        dev.upload(&t.term_s_off)?,
    );
    let (in_i, out_i) = (
        i32_arg(OP, "in_dim", in_dim)?,
        i32_arg(OP, "out_dim", out_dim)?,
    );
    let (terms, segs) = (t.term_seg.len() as u32, (t.seg_rows.len() / 2) as u32);

    let shrink = dev.function("sgmv", &format!("sgmv_shrink_{}", T::SUFFIX))?;
    let warps = (THREADS / 32) as usize;
    let chunks = t.max_work.div_ceil(warps).clamp(1, MAX_CHUNKS) as u32;
    let mut b = dev.stream().launch_builder(&shrink);
    b.arg(x)
        .arg(&in_i)
        .arg(&seg_rows)
        .arg(&term_seg)
        .arg(&term_a);
    b.arg(&term_rank).arg(&term_s_off).arg(&s);
    // SAFETY: argument order and types match `sgmv_shrink_*` in kernels/sgmv.cu. `check` proved
    // every segment lies inside x's rows and every A is [rank, in_dim]; the tables were built from
    // those segments/terms, and scratch `s` has Σ rows·rank floats, so every read and write is in
    // bounds. The A/B buffers are borrowed for this call and freed stream-ordered, after the launch.
    unsafe { b.launch(grid((terms, chunks, 1), THREADS, 0)) }?;

    let expand = dev.function("sgmv", &format!("sgmv_expand_{}", T::SUFFIX))?;
    let tiles = out_dim.div_ceil(THREADS as usize) as u32;
    let row_chunks = t.max_rows.clamp(1, MAX_CHUNKS) as u32;
    let mut b = dev.stream().launch_builder(&expand);
    b.arg(y)
        .arg(&out_i)
        .arg(&seg_rows)
        .arg(&seg_terms)
        .arg(&term_b);
    b.arg(&term_rank).arg(&term_coeff).arg(&term_s_off).arg(&s);
    // SAFETY: matches `sgmv_expand_*`; segments are disjoint (checked), so each y element is
    // written by exactly one thread; B is [out_dim, rank] (checked at upload and in `check`);
    // the scratch offsets are the ones the shrink launch wrote, same stream, so it ran first.
    unsafe { b.launch(grid((segs, tiles, row_chunks), THREADS, 0)) }?;
    Ok(())
}
