//! LoRA weights resident on the device and the per-batch description the SGMV/BGMV launchers
//! take. A [`DeviceLora`] is one adapter's A/B pair for one projection (a slot of the pager's
//! device pool); kernels receive the *addresses* of these buffers in pointer tables, so one launch
//! serves every adapter of the batch. Dimensions are checked once, at upload.

use super::device::{ensure, CudaDevice};
use super::GpuFloat;
use crate::Result;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use std::ops::Range;

/// `a` is `[rank, in_dim]`, `b` is `[out_dim, rank]` (PEFT's lora_A / lora_B layout).
pub struct DeviceLora<T> {
    a: CudaSlice<T>,
    b: CudaSlice<T>,
    rank: usize,
    in_dim: usize,
    out_dim: usize,
}

impl<T: GpuFloat + Default> DeviceLora<T> {
    pub fn upload(
        dev: &CudaDevice,
        a: &[T],
        b: &[T],
        rank: usize,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Self> {
        const OP: &str = "lora_upload";
        ensure(OP, rank > 0 && in_dim > 0 && out_dim > 0, || {
            format!("empty LoRA: rank {rank}, in {in_dim}, out {out_dim}")
        })?;
        ensure(
            OP,
            a.len() == rank * in_dim && b.len() == out_dim * rank,
            || {
                format!(
                    "A has {} elements (want {rank}x{in_dim}), B has {} (want {out_dim}x{rank})",
                    a.len(),
                    b.len()
                )
            },
        )?;
        Ok(DeviceLora {
            a: dev.upload(a)?,
            b: dev.upload(b)?,
            rank,
            in_dim,
            out_dim,
        })
    }
}

impl<T> DeviceLora<T> {
    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }
    pub(super) fn a(&self) -> &CudaSlice<T> {
        &self.a
    }
    /// Device addresses of A and B, for the kernels' pointer tables.
    pub(super) fn addrs(&self, stream: &CudaStream) -> (u64, u64) {
        let (a, _sync_a) = self.a.device_ptr(stream);
        let (b, _sync_b) = self.b.device_ptr(stream);
        (a, b)
    }
    pub(super) fn b(&self) -> &CudaSlice<T> {
        &self.b
    }
}

/// One adapter applied to a segment with `coeff` = PEFT scale × the request's mixing weight.
pub struct DeviceLoraTerm<'a, T> {
    pub lora: &'a DeviceLora<T>,
    pub coeff: f32,
}

/// Contiguous batch rows sharing the same terms (the device twin of `cpu::LoraSegment`).
pub struct DeviceSegment<'a, T> {
    pub rows: Range<usize>,
    pub terms: Vec<DeviceLoraTerm<'a, T>>,
}
