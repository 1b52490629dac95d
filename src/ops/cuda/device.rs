//! One CUDA device: its context, the one stream every launcher uses, and the PTX modules that
//! build.rs compiled from `kernels/*.cu` (embedded in the binary, JIT-loaded by the driver).
//! A `CudaDevice` only exists if the driver loaded, the GPU is sm_90 or newer and every module
//! loaded; kernel functions are looked up by name once and cached.

use crate::{Error, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, LaunchConfig,
    ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

mod kernels {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// The PTX targets sm_90 (H100); older GPUs cannot JIT it.
const MIN_COMPUTE_CAPABILITY: (i32, i32) = (9, 0);

/// True if the CUDA driver initializes. The driver library is linked (cudarc `dynamic-linking`,
/// as candle requires), so a process that started has it; `cuInit` fails without a GPU.
pub fn driver_available() -> bool {
    cudarc::driver::result::init().is_ok()
}

pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: HashMap<&'static str, Arc<CudaModule>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
}

impl CudaDevice {
    /// Opens GPU `ordinal` and loads every kernel module.
    pub fn open(ordinal: usize) -> Result<Self> {
        if !driver_available() {
            return Err(Error::cuda(
                "open",
                "the CUDA driver (libcuda.so.1) cannot be loaded: no NVIDIA driver on this machine",
            ));
        }
        let ctx = CudaContext::new(ordinal)?;
        let cc = ctx.compute_capability()?;
        if cc < MIN_COMPUTE_CAPABILITY {
            return Err(Error::cuda(
                "open",
                format!("GPU {ordinal} has compute capability {cc:?}; the kernels need sm_90+"),
            ));
        }
        let stream = ctx.default_stream();
        let mut modules = HashMap::new();
        for &(name, ptx) in kernels::MODULES {
            let m = ctx
                .load_module(Ptx::from_src(ptx))
                .map_err(|e| Error::cuda("load_module", format!("kernels/{name}.cu: {e}")))?;
            modules.insert(name, m);
        }
        Ok(CudaDevice {
            ctx,
            stream,
            modules,
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// [`CudaDevice::open`], or `None` with one warning saying why the CPU path is used.
    pub fn open_or_cpu(ordinal: usize) -> Option<Self> {
        match Self::open(ordinal) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!("CUDA unavailable, using the CPU path: {e}");
                None
            }
        }
    }

    pub fn name(&self) -> Result<String> {
        Ok(self.ctx.name()?)
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Kernel `name` of module `kernels/{module}.cu`.
    pub(super) fn function(&self, module: &str, name: &str) -> Result<CudaFunction> {
        let mut cache = self.functions.lock().expect("function cache poisoned");
        if let Some(f) = cache.get(name) {
            return Ok(f.clone());
        }
        let m = self
            .modules
            .get(module)
            .ok_or_else(|| Error::cuda("function", format!("no module kernels/{module}.cu")))?;
        let f = m
            .load_function(name)
            .map_err(|e| Error::cuda("function", format!("{module}::{name}: {e}")))?;
        cache.insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// Copies `host` to a new device buffer (an empty slice gives a one-element buffer, since the
    /// driver refuses zero-byte allocations; launchers never read it).
    pub fn upload<T: DeviceRepr + Copy + Default>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        if host.is_empty() {
            return Ok(self.stream.clone_htod(&[T::default()][..])?);
        }
        Ok(self.stream.clone_htod(host)?)
    }

    /// Copies `dev` back to the host, after all work enqueued before it.
    pub fn download<T: DeviceRepr + Copy>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>> {
        let host = self.stream.clone_dtoh(dev)?;
        self.stream.synchronize()?;
        Ok(host)
    }

    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        Ok(self.stream.alloc_zeros(len.max(1))?)
    }

    /// Waits for all work enqueued so far; surfaces asynchronous kernel faults as errors.
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    /// Errors unless every buffer was allocated in this device's context.
    pub(super) fn check_owned<'a>(
        &self,
        op: &'static str,
        ctxs: impl IntoIterator<Item = &'a Arc<CudaContext>>,
    ) -> Result<()> {
        match ctxs.into_iter().all(|c| Arc::ptr_eq(c, &self.ctx)) {
            true => Ok(()),
            false => Err(Error::cuda(op, "a buffer lives on another device")),
        }
    }
}

/// `Err(Error::Cuda)` unless `cond`; the message is built only on failure.
pub(super) fn ensure(op: &'static str, cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    match cond {
        true => Ok(()),
        false => Err(Error::cuda(op, msg())),
    }
}

/// A 1-D launch of `blocks` blocks of `threads` threads.
pub(super) fn grid(blocks: (u32, u32, u32), threads: u32, shared: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: blocks,
        block_dim: (threads, 1, 1),
        shared_mem_bytes: shared,
    }
}

/// `v` as an i32 kernel argument, or an error naming `what` if it does not fit.
pub(super) fn i32_arg(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::cuda(op, format!("{what} = {v} exceeds i32")))
}
