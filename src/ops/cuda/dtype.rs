//! The element types the kernels are instantiated for. `SUFFIX` selects the extern "C" entry point
//! (`sgmv_shrink_bf16`, ...); the host conversions are the ones the tests use to build inputs.

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};

/// An element type with a kernel instantiation: f32, f16, bf16.
pub trait GpuFloat:
    DeviceRepr + ValidAsZeroBits + Copy + Send + Sync + std::fmt::Debug + 'static
{
    /// Suffix of the kernel entry points for this type (`f32`, `f16`, `bf16`).
    const SUFFIX: &'static str;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl GpuFloat for f32 {
    const SUFFIX: &'static str = "f32";
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl GpuFloat for half::f16 {
    const SUFFIX: &'static str = "f16";
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

impl GpuFloat for half::bf16 {
    const SUFFIX: &'static str = "bf16";
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}
