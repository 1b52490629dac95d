//! CUDA launchers for the kernels in `kernels/` (feature `cuda`). What always holds:
//! - every launcher checks shapes, bounds and that every buffer lives on the launcher's device
//!   *before* anything is enqueued, and returns [`crate::Error::Cuda`] instead of launching;
//! - the element type is a type parameter ([`GpuFloat`]: f32, f16, bf16), so a dtype mismatch
//!   between buffers cannot compile; inputs are read in T and accumulated in f32;
//! - every CUDA call is checked and mapped into [`crate::Error`]; `unsafe` appears only at the
//!   kernel-launch boundary, each block with its SAFETY argument;
//! - each launcher's oracle is the same-named op in [`crate::ops::cpu`] (tests/cuda_kernels.rs);
//! - the driver is linked (`libcuda.so.1`, cudarc `dynamic-linking`, as candle's CUDA backend
//!   requires): building needs nvcc and link stubs (scripts/cuda-env.sh), and the binary starts only
//!   where the CUDA libraries are; [`CudaDevice::open_or_cpu`] returns `None` (after one clear
//!   warning) when no GPU answers.
//!
//! All work goes on the device's one stream, so stream order alone sequences a launch after the
//! uploads it reads and before any free of those buffers (cudarc frees stream-ordered).

mod activation;
mod attention;
mod bgmv;
mod device;
mod dtype;
mod linear;
mod lora;
mod norm;
mod rope;
mod sgmv;

pub use activation::silu_and_mul;
pub use attention::{paged_attention, write_kv, DeviceAttnBatch, DeviceKvLayer};
pub use bgmv::{bgmv, bgmv_indexed, BgmvIndex, DecodeRow, DeviceLoraTable};
pub use device::{driver_available, CudaDevice};
pub use dtype::GpuFloat;
pub use linear::linear;
pub use lora::{DeviceLora, DeviceLoraTerm, DeviceSegment};
pub use norm::{fused_add_rms_norm, rms_norm};
pub use rope::{rope, DeviceRopeTable};
pub use sgmv::sgmv;

pub use cudarc::driver::CudaSlice;
