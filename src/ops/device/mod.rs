//! Our kernels as candle custom ops, for the device executor (`exec::device`): what candle lacks —
//! the paged KV write, paged attention (decode and varlen causal prefill in one call) and SGMV/BGMV
//! over the adapter slot pool. Each op's `cpu_fwd` is the `ops::cpu` twin, called on the tensors'
//! host storage, so the device executor on candle's CPU device computes exactly what the CPU
//! executor computes. The per-step indices each op reads (block tables, KV slots, LoRA segments)
//! come from one `u32` tensor uploaded once per step; each op's file owns the encoding it reads.

mod kv_write;
mod paged_attention;
mod sgmv;
mod storage;

pub use kv_write::KvWrite;
pub use paged_attention::{encode_attn_index, PagedAttention};
pub use sgmv::{encode_lora_index, LoraPair, Sgmv, SlotLora};
