//! The engine: sequences (`sequence`), what to run each step (`scheduler`), how to pick tokens
//! (`sampler`), text and stop handling (`detokenizer`), the synchronous step loop (`llm_engine`)
//! its thread + async front (`handle`), the thread's panic containment and restart
//! (`supervisor`) and a test-only fault trigger (`fault`, feature `fault-injection`). `LlmEngine::step` = schedule -> forward -> postprocess.

mod detokenizer;
mod fault;
mod handle;
mod llm_engine;
mod request;
mod sampler;
mod scheduler;
mod sequence;
mod supervisor;

pub use handle::{EngineHandle, RequestStream};
pub use llm_engine::{EngineStats, LlmEngine};
pub use request::{
    choice_seed, FinishReason, GenerateRequest, SamplingParams, SeqEvent, TokenLogprob, MAX_N,
};
pub use sampler::Sampler;
pub use sequence::SeqId;
