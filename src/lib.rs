//! openlora serves one base LLM and many LoRA adapters from one machine. A request is validated
//! once at the edge (`server`) into an `engine::GenerateRequest` (prompt ids, resolved adapters,
//! sampling); the `engine` schedules sequences of different adapters into one step and turns it
//! into an `exec::StepPlan` of plain integers (tokens, positions, KV slots from `kv_cache`'s block
//! ids — ref-counted blocks, shared through a prefix cache keyed by adapter identity and between
//! the `n` choices of a request, with copy-on-write block copies — LoRA segments as adapter slot
//! ids); an `exec::Executor` (the CPU one: dense f32 or quantized weights from `model`,
//! f16/bf16/f32 KV storage; or the device one over candle tensors, whose custom ops live in
//! `ops::device`) runs it and returns the logits rows.
//! Nothing above `exec` names a device type. Registered adapters are validated lazily (config +
//! header) and paged disk -> host -> a slot of the device pool by `lora::AdapterPager`, which fills
//! `lora::SlotTable`; the scheduler only runs sequences whose adapters hold a slot. `ops::cpu`
//! holds the CPU numerics (the f32 reference ops, the oracle of every CUDA kernel in `ops::cuda`,
//! and the int8 `quant` kernels). Metered calls settle in batches on an OP Stack chain through
//! `chain` (alloy bindings to `contracts/`); `ledger` records every call durably, attributes it to
//! data contributors and runs the settlement worker. Dependencies point one way: server -> engine
//! -> exec -> model/lora/kv_cache -> ops; ledger and chain beside them. The command-line front
//! ends live in the binary (`src/cli/`). `hub` fetches models and adapters by Hugging Face id into
//! the local hub cache; `progress` reports long work (downloads, loading, indexing) on stderr.
//! `train` fine-tunes LoRA adapters (candle CPU autograd over the frozen base weights) and writes them
//! in the PEFT format `lora` loads; `factory` runs them as OpenAI fine-tuning jobs inside the server
//! (files, jobs, events, checkpoints in SQLite) and deploys the adapters they produce.

pub mod chain;
pub mod clock;
pub mod config;
pub mod engine;
pub mod error;
pub mod exec;
pub mod factory;
pub mod hub;
pub mod kv_cache;
pub mod ledger;
pub mod lora;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod progress;
pub mod server;
pub mod train;

pub use error::{Error, Result};
