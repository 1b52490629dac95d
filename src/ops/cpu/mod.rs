//! CPU reference ops on plain `f32` slices (row-major). Shapes are checked by the callers that
//! build the batch (`model::llama`); these functions assert them in debug builds only.

mod activation;
mod attention;
mod attention_grouped;
mod linear;
mod norm;
pub mod quant;
mod rope;
mod sgmv;
pub mod quant;

pub use activation::silu_and_mul;
pub use attention::{paged_attention, write_kv, AttnSeq, KvLayerView};
pub use attention_grouped::{paged_attention_grouped, write_kv_as, KvElem, KvView};
pub use linear::{dot, linear};
pub use norm::rms_norm;
pub use quant::{qlinear, QMatrix, QStorage, QuantError, WeightFormat};
pub use rope::RopeTable;
pub use sgmv::{sgmv, LoraSegment, LoraTerm};
