//! The engine: sequences (`sequence`), what to run each step (`scheduler`), how to pick tokens
//! (`sampler`), text and stop handling (`detokenizer`), the synchronous step loop (`llm_engine`)
//! its thread + async front (`handle`), the thread's panic containment and restart
//! (`supervisor`), a test-only fault trigger (`fault`, feature `fault-injection`), and structured
//! outputs: `grammar` compiles a request's grammar, `constraint` masks that sequence's logits. `LlmEngine::step` = schedule -> forward -> postprocess.

mod constraint;
mod detokenizer;
mod fault;
mod grammar;
mod handle;
mod llm_engine;
mod request;
mod sampler;
mod scheduler;
mod sequence;
mod supervisor;

pub use constraint::{apply_mask, Constraint};
pub use grammar::{choice_lark, Grammar, GrammarCompiler};
pub use handle::{EngineHandle, RequestStream};
pub use llm_engine::{check_choices, EngineStats, LlmEngine};
pub use request::{
    choice_seed, FinishReason, GenerateRequest, SamplingParams, SeqEvent, TokenLogprob, MAX_N,
};
pub use sampler::Sampler;
pub use sequence::SeqId;
