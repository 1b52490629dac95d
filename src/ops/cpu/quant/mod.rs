//! Quantized weights kept in their GGUF/ggml formats, and the matrix product over them.
//!
//! - [`WeightFormat`]: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K.
//! - [`QMatrix`]: `[out, in]` rows of raw ggml blocks, memory-mapped or owned; dequantize a row
//!   (embeddings) or everything (the f32 path); quantize f32 to any format; permute whole rows;
//!   pack `Q4_0`/`Q4_1`/`Q8_0` into groups of 8 interleaved rows for the CPU kernels (`packed`).
//! - [`qlinear`]: `y = x · Wᵀ + b`, activations quantized once per call to 8 bits (one plane, or
//!   two for ~15 bits: [`ActPrecision`], a property of the matrix), integer dot
//!   products (AVX2, or AVX-512 VNNI when the CPU has it), threads over output features;
//!   [`qlinear_many`]: several projections of the same input in one parallel region;
//!   [`qlinear_lora`]: those with their LoRA deltas, the shrinks inside the same region.
//!
//! What always holds: an output element's arithmetic is fixed ([`scalar`] writes it down), so a
//! row's result is bit-identical alone or in any batch, at any position, on any thread count and
//! with any [`Isa`]; float weights in `F32` give exactly `ops::cpu::linear`.

mod act_precision;
mod acts;
mod blocks;
mod format;
mod packed;
mod qlinear;
mod qlinear_lora;
mod qlinear_many;
mod qmatrix;
mod scalar;
mod storage;
mod tile;

/// Declares the x86-64 kernel modules (AVX2 + FMA are compile-time features of the build there).
macro_rules! x86_kernels {
    ($($m:ident),*) => {
        $(
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
            mod $m;
        )*
    };
}
x86_kernels!(acts_x86, simd, simd32, simdf, simdk, simdp, x86);

pub use act_precision::ActPrecision;
pub use format::{QuantError, WeightFormat, QK_K};
pub use qlinear::{qlinear, qlinear_with, Isa};
pub use qlinear_lora::{qlinear_lora, LoraSegs};
pub use qlinear_many::{qlinear_many, qlinear_many_with, NoHooks, QProj, TaskHooks};
pub use qmatrix::QMatrix;
pub use storage::QStorage;
