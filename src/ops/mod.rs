//! Numerical operations of the forward pass. `cpu` holds the reference implementations, which are
//! also the oracles ("CPU twins") for the CUDA kernels in `kernels/`. Every op here is
//! *row-independent*: a row's result depends only on that row's inputs and the weights, always
//! with the same reduction order, so a sequence gives bit-identical results alone or in any batch.
//! `cuda` (feature `cuda`) holds the launchers of those kernels, each checked against its twin.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
