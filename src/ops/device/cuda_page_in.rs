//! Page-in on CUDA (feature `cuda`): the adapter's pairs are converted to the pool's dtype into
//! one pinned (page-locked) host buffer and copied into their slot by `cuMemcpyHtoDAsync` on a
//! second stream (the copy stream, forked from candle's compute stream), so the DMA can run beside
//! the compute stream. What always holds:
//! - the copy stream waits (on the GPU; the host does not block) for the event the compute stream
//!   recorded after the last step that read the slot ([`CudaStager::end_step`]), so a slot is
//!   never overwritten under a step that reads its previous occupant;
//! - the compute stream waits for the event recorded on the copy stream after a page-in's copies
//!   ([`CudaStager::finish`]), so the next step reads the new occupant;
//! - the host waits for the previous page-in's copies before it rewrites the pinned buffer.
//!
//! Today a page-in is issued between steps (a step returns only after its logits are on the host),
//! so the copy does not yet overlap a step and these waits are already satisfied when issued; they
//! keep the order right once page-ins are issued while a step runs.
//!
//! cudarc's own per-allocation event tracking (on by default in candle) orders these accesses to
//! the pool tensors as well; the explicit events state the rule and keep holding should tracking
//! be disabled. NOT VERIFIED ON A GPU: this file is compiled and linked in the cuda build only; the
//! twin's ordering (the step counter in `exec::device::SlotPool`) is what CI tests.

use super::cuda::view_mut;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    result, CudaEvent, CudaStream, DevicePtrMut, DeviceRepr, PinnedHostSlice,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{
    bail, CpuStorage, CudaDevice, CudaStorage, DType, InplaceOp1, Layout, Result, Tensor,
};
use std::ops::Range;
use std::sync::Arc;

pub struct CudaStager {
    compute: Arc<CudaStream>,
    copy: Arc<CudaStream>,
    pinned: Option<PinnedHostSlice<u8>>,
    /// Recorded on the copy stream after the last page-in's copies.
    copied: Option<CudaEvent>,
    /// Per slot: recorded on the compute stream after the last step that read it.
    read: Vec<Option<Arc<CudaEvent>>>,
}

impl CudaStager {
    pub fn new(dev: &CudaDevice, slots: usize) -> Result<Self> {
        let compute = dev.cuda_stream();
        let copy = compute.fork().w()?;
        Ok(CudaStager {
            compute,
            copy,
            pinned: None,
            copied: None,
            read: vec![None; slots],
        })
    }

    /// `len` bytes of pinned staging, once the previous page-in's copies have completed.
    pub fn buffer(&mut self, len: usize) -> Result<&mut [u8]> {
        if let Some(e) = &self.copied {
            e.synchronize().w()?;
        }
        if self.pinned.as_ref().is_none_or(|p| p.len() < len) {
            // SAFETY: uninitialised pinned bytes; the caller writes `[..len]` before any copy
            // reads them (`LoraPool::fill_cuda` encodes every staged range first).
            self.pinned = Some(unsafe { self.compute.context().alloc_pinned::<u8>(len) }.w()?);
        }
        let Some(p) = self.pinned.as_mut() else {
            bail!("page-in: no pinned buffer")
        };
        Ok(&mut p.as_mut_slice().w()?[..len])
    }

    /// Makes the copy stream wait (on the GPU) for the last step that read `slot`.
    pub fn after_reads(&self, slot: usize) -> Result<()> {
        match self.read.get(slot) {
            Some(Some(e)) => self.copy.wait(e).w(),
            Some(None) => Ok(()),
            None => bail!("page-in: slot {slot} outside the pool"),
        }
    }

    /// Copies the staged bytes `src` into `t` from element `offset` on, on the copy stream.
    pub fn copy(&self, t: &Tensor, offset: usize, src: Range<usize>) -> Result<()> {
        t.inplace_op1(&PageIn {
            stager: self,
            offset,
            src,
        })
    }

    /// Ends a page-in: the compute stream will wait for its copies.
    pub fn finish(&mut self) -> Result<()> {
        let e = self.copy.record_event(None).w()?;
        self.compute.wait(&e).w()?;
        self.copied = Some(e);
        Ok(())
    }

    /// Records, after the step just enqueued on the compute stream, that it read `slots`.
    pub fn end_step(&mut self, slots: &[usize]) -> Result<()> {
        if slots.is_empty() {
            return Ok(());
        }
        let e = Arc::new(self.compute.record_event(None).w()?);
        for &s in slots {
            if let Some(r) = self.read.get_mut(s) {
                *r = Some(e.clone());
            }
        }
        Ok(())
    }
}

/// The copy of one staged range into a pool tensor, as an in-place op (the only public way to
/// reach a tensor's `CudaSlice` mutably).
struct PageIn<'a> {
    stager: &'a CudaStager,
    offset: usize,
    src: Range<usize>,
}

impl InplaceOp1 for PageIn<'_> {
    fn name(&self) -> &'static str {
        "page_in"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> Result<()> {
        bail!("page_in: the CPU twin writes its pool with slice_set")
    }

    fn cuda_fwd(&self, s: &mut CudaStorage, l: &Layout) -> Result<()> {
        let Some(p) = self.stager.pinned.as_ref() else {
            bail!("page_in: nothing staged")
        };
        let bytes = p.as_slice().w()?;
        let Some(bytes) = bytes.get(self.src.clone()) else {
            bail!(
                "page_in: staged range {:?} beyond {}",
                self.src,
                bytes.len()
            )
        };
        let stream = &self.stager.copy;
        match s.dtype() {
            DType::F32 => copy::<f32>(s, l, self.offset, bytes, stream),
            DType::F16 => copy::<half::f16>(s, l, self.offset, bytes, stream),
            DType::BF16 => copy::<half::bf16>(s, l, self.offset, bytes, stream),
            d => bail!("page_in: no pool of {d:?}"),
        }
    }
}

fn copy<T: CudaDType + DeviceRepr>(
    s: &mut CudaStorage,
    l: &Layout,
    offset: usize,
    bytes: &[u8],
    stream: &CudaStream,
) -> Result<()> {
    let size = std::mem::size_of::<T>();
    let n = bytes.len() / size;
    if n * size != bytes.len() {
        bail!(
            "page_in: {} bytes are not whole {size}-byte elements",
            bytes.len()
        )
    }
    let mut all = view_mut::<T>(s, l)?;
    if offset + n > all.len() {
        bail!(
            "page_in: {n} elements at {offset} beyond a pool of {}",
            all.len()
        )
    }
    let mut dst = all.slice_mut(offset..offset + n);
    // Waits on the copy stream for the tensor's earlier reads and writes (cudarc's tracking) and
    // records this write when `_written` drops, after the copy is enqueued.
    let (ptr, _written) = dst.device_ptr_mut(stream);
    // SAFETY: `dst` is `n` elements = `bytes.len()` bytes of device memory (checked above);
    // `bytes` is pinned host memory owned by the stager, which is not rewritten before the host
    // waits for the event `finish` records after this copy (`buffer`), nor freed while a copy may
    // be pending (the stager outlives the pool's page-ins; a new buffer replaces the old one only
    // in `buffer`, after that wait).
    unsafe { result::memcpy_htod_async(ptr, bytes, stream.cu_stream()) }.w()?;
    Ok(())
}

/// `v` in the pool's dtype, as the little-endian bytes the device reads (the same round-to-nearest
/// conversions as candle's `to_dtype`).
pub fn encode(dtype: DType, v: &[f32], out: &mut [u8]) -> Result<()> {
    let size = dtype.size_in_bytes();
    if out.len() != v.len() * size {
        bail!(
            "page_in: {} values into {} bytes of {dtype:?}",
            v.len(),
            out.len()
        )
    }
    let chunks = out.chunks_exact_mut(size).zip(v);
    match dtype {
        DType::F32 => chunks.for_each(|(o, x)| o.copy_from_slice(&x.to_le_bytes())),
        DType::F16 => {
            chunks.for_each(|(o, x)| o.copy_from_slice(&half::f16::from_f32(*x).to_le_bytes()))
        }
        DType::BF16 => {
            chunks.for_each(|(o, x)| o.copy_from_slice(&half::bf16::from_f32(*x).to_le_bytes()))
        }
        d => bail!("page_in: no pool of {d:?}"),
    }
    Ok(())
}
