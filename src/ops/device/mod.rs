//! Our kernels as candle custom ops, for the device executor (`exec::device`): what candle lacks —
//! the paged KV write, paged attention (decode and varlen causal prefill in one call) and SGMV/BGMV
//! over the adapter slot pool (`lora_pool`). Each op's `cpu_fwd` is the `ops::cpu` twin, called on
//! the tensors' host storage, so the device executor on candle's CPU device computes exactly what
//! the CPU executor computes; each op's `cuda_fwd` (feature `cuda`) launches its kernel from
//! `kernels/` on the tensors' CUDA stream. The per-step indices each op reads (block tables, KV
//! slots, LoRA segments) are views of one `u32` tensor uploaded once per step; each op's file owns
//! the one encoding both of its sides read.

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
mod cuda_page_in;
mod kv_write;
mod linear;
mod lora_pool;
mod paged_attention;
mod sgmv;
mod storage;

pub use kv_write::KvWrite;
pub use linear::Linear;
pub use lora_pool::{LoraPool, ProjPool};
pub use paged_attention::{encode_attn_index, AttnShape, PagedAttention};
pub use sgmv::{encode_lora_index, LoraShape, Sgmv};
