//! openlora serves one base LLM and many LoRA adapters from one machine. A request is validated
//! once at the edge into a `engine::GenerateRequest` (prompt ids, resolved adapters, sampling);
//! the `engine` batches sequences of different adapters into one forward step of the
//! `model` (Llama family, loaded from GGUF or HF folders), whose projections add each row's LoRA
//! delta (`lora`, `ops::cpu::sgmv`) and whose attention reads a paged KV cache (`kv_cache`).
//! Registered adapters are validated lazily (config + header) and paged disk -> host -> device by
//! `lora::AdapterPager`; the scheduler only runs sequences whose adapters are resident.
//! `ops::cpu` holds the reference numerics, the oracle for every CUDA kernel. Metered calls settle
//! in batches on an OP Stack chain through `chain` (alloy bindings to `contracts/`); `ledger` records
//! every call durably, attributes it to data contributors and runs the settlement worker.

pub mod chain;
pub mod clock;
pub mod config;
pub mod engine;
pub mod error;
pub mod exec;
pub mod kv_cache;
pub mod ledger;
pub mod lora;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod server;

pub use error::{Error, Result};
