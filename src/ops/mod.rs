//! Numerical operations of the forward pass. `cpu` holds the reference implementations, which are
//! also the oracles ("CPU twins") for the CUDA kernels in `kernels/`; `device` holds the candle
//! custom ops of the device executor (`cpu_fwd` = the `cpu` twin, `cuda_fwd` = the kernel, under
//! feature `cuda`). Every op in `cpu` is
//! *row-independent*: a row's result depends only on that row's inputs and the weights, always
//! with the same reduction order, so a sequence gives bit-identical results alone or in any batch.

pub mod cpu;
pub mod device;
