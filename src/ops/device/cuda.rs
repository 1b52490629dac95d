//! The CUDA side of the custom ops (feature `cuda`): the PTX that build.rs compiled from
//! `kernels/*.cu` (embedded in the binary, JIT-loaded once per device through candle's module
//! cache), typed views of candle's CUDA storage, and launch shapes. Every launch goes on the
//! tensors' device stream (candle's), so stream order sequences it after the uploads and ops
//! that produced its inputs.

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaStream, CudaView, CudaViewMut, LaunchArgs, LaunchConfig,
};
use candle_core::cuda_backend::CudaDType;
use candle_core::{bail, CudaStorage, DType, Layout, Result, Storage, Tensor};
use std::ops::Deref;
use std::sync::Arc;

mod ptx {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// A loaded kernel and the stream of the device it was loaded on.
pub struct Kernel(CudaFunction, Arc<CudaStream>);

impl Kernel {
    pub fn builder(&self) -> LaunchArgs<'_> {
        self.1.launch_builder(&self.0)
    }
}

/// Kernel `{name}_{dtype}` of `kernels/{module}.cu` on `s`'s device.
pub fn func(s: &CudaStorage, module: &str, name: &str, dtype: DType) -> Result<Kernel> {
    let Some((_, src)) = ptx::MODULES.iter().find(|(m, _)| *m == module) else {
        bail!("no kernels/{module}.cu in this build")
    };
    let suffix = match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        d => bail!("{module}::{name}: no kernel for {d:?}"),
    };
    let f = s
        .device
        .get_or_load_custom_func(&format!("{name}_{suffix}"), module, src)?;
    Ok(Kernel(f.into_cuda_function(), s.device.cuda_stream()))
}

/// The contiguous elements `l` names.
pub fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("custom op operand must be contiguous, got {l:?}")
    };
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

/// The contiguous elements `l` names, writable.
pub fn view_mut<'a, T: CudaDType>(
    s: &'a mut CudaStorage,
    l: &Layout,
) -> Result<CudaViewMut<'a, T>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("custom op operand must be contiguous, got {l:?}")
    };
    Ok(s.as_cuda_slice_mut::<T>()?.slice_mut(a..b))
}

/// A tensor's storage, held for the duration of a launch (an op's side operand: an index view,
/// the slot pool).
pub struct Held<'a, G>(G, &'a Layout);

/// Holds `t`'s storage (a read lock) while its views are used.
pub fn held(t: &Tensor) -> Held<'_, impl Deref<Target = Storage> + '_> {
    let (g, l) = t.storage_and_layout();
    Held(g, l)
}

impl<G: Deref<Target = Storage>> Held<'_, G> {
    pub fn view<T: CudaDType>(&self) -> Result<CudaView<'_, T>> {
        match &*self.0 {
            Storage::Cuda(s) => view(s, self.1),
            _ => bail!("custom op operand is not on the CUDA device"),
        }
    }

    /// The elements `range` of this (contiguous) operand.
    pub fn part<T: CudaDType>(&self, range: std::ops::Range<usize>) -> Result<CudaView<'_, T>> {
        let v = self.view::<T>()?;
        if range.end > v.len() {
            bail!("index part {range:?} beyond an operand of {}", v.len())
        }
        Ok(v.slice(range))
    }
}

/// A launch of `blocks` blocks of `threads` threads with `shared` bytes of shared memory.
pub fn grid(blocks: (u32, u32, u32), threads: u32, shared: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: blocks,
        block_dim: (threads, 1, 1),
        shared_mem_bytes: shared,
    }
}

/// `v` as an i32 kernel argument.
pub fn i32_arg(what: &str, v: usize) -> Result<i32> {
    match i32::try_from(v) {
        Ok(v) => Ok(v),
        Err(_) => bail!("{what} = {v} exceeds i32"),
    }
}
