//! CPU ops on plain `f32` slices (row-major): the f32 reference numerics (the oracle of every CUDA
//! kernel), the quantized matrix product (`quant`) and 16-bit-KV attention. Shapes are checked by
//! the callers that build the batch (`exec::cpu`); these functions assert them in debug builds only.

mod activation;
mod attention;
mod attention_grouped;
mod half_lora;
mod int8_lora;
mod linear;
mod linear_x86;
mod lora_panels;
mod lora_panels_x86;
mod norm;
mod prefetch;
pub mod quant;
mod rope;
mod sgmv;

pub use activation::silu_and_mul;
pub use attention::{paged_attention, write_kv, AttnSeq, KvLayerView};
pub use attention_grouped::{paged_attention_grouped, write_kv_as, KvElem, KvView};
pub use half_lora::{HalfLora, HalfTerm};
pub use int8_lora::{Int8Lora, Int8Term};
pub use linear::{dot, linear};
pub use norm::rms_norm;
pub use quant::{qlinear, QMatrix, QStorage, QuantError, WeightFormat};
pub use rope::RopeTable;
pub use sgmv::{sgmv, sgmv_pairs, LoraPair, LoraSegment, LoraTerm};
