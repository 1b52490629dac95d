//! Checked request types: what the HTTP edge or the CLI hands the engine after validation, and
//! what the engine streams back. `SamplingParams::validate` is the one place parameters are checked.

use super::constraint::Constraint;
use crate::error::{Error, Result};
use crate::lora::AdapterRef;

/// Most choices one request may ask for (`n`), as OpenAI allows.
pub const MAX_N: usize = 128;

#[derive(Debug, Clone)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// HF-style; 1.0 = off.
    pub repetition_penalty: f32,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    /// Keep going past EOS ids (used by reference tests).
    pub ignore_eos: bool,
    /// Number of top alternatives to report per token; `None` = no logprobs.
    pub logprobs: Option<usize>,
    /// Structured output: the grammar the completion must match (`None` = free text).
    pub constraint: Option<Constraint>,
    /// Choices to generate from the one prompt (its KV blocks are computed once and shared).
    pub n: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            max_tokens: 256,
            stop: vec![],
            stop_token_ids: vec![],
            ignore_eos: false,
            logprobs: None,
            constraint: None,
            n: 1,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, param: &str, msg: &str| {
            if ok {
                Ok(())
            } else {
                Err(Error::invalid(param, msg))
            }
        };
        check(
            self.temperature.is_finite() && (0.0..=2.0).contains(&self.temperature),
            "temperature",
            "must be between 0 and 2",
        )?;
        check(
            self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0,
            "top_p",
            "must be in (0, 1]",
        )?;
        check(
            self.min_p.is_finite() && (0.0..=1.0).contains(&self.min_p),
            "min_p",
            "must be in [0, 1]",
        )?;
        check(
            self.presence_penalty.is_finite() && (-2.0..=2.0).contains(&self.presence_penalty),
            "presence_penalty",
            "must be between -2 and 2",
        )?;
        check(
            self.frequency_penalty.is_finite() && (-2.0..=2.0).contains(&self.frequency_penalty),
            "frequency_penalty",
            "must be between -2 and 2",
        )?;
        check(
            self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0,
            "repetition_penalty",
            "must be > 0",
        )?;
        check(
            (1..=MAX_N).contains(&self.n),
            "n",
            "must be between 1 and 128",
        )?;
        check(self.max_tokens >= 1, "max_tokens", "must be at least 1")?;
        check(
            self.stop.len() <= 4 && self.stop.iter().all(|s| !s.is_empty()),
            "stop",
            "at most 4 non-empty strings",
        )?;
        check(
            self.logprobs.is_none_or(|n| n <= 20),
            "top_logprobs",
            "must be between 0 and 20",
        )?;
        Ok(())
    }
}

/// The sampler seed of choice `choice` of a request seeded with `seed` (choice 0 keeps `seed`, so
/// `n = 1` is unchanged; the others are spread by the golden-ratio increment).
pub fn choice_seed(seed: u64, choice: usize) -> u64 {
    seed.wrapping_add((choice as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// A validated generation request. `adapters` empty = base model; several = weighted sum.
#[derive(Clone)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub adapters: Vec<(AdapterRef, f32)>,
    pub params: SamplingParams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    /// The client went away or the request was aborted.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// One step's output for one choice of a request.
#[derive(Debug, Clone)]
pub struct SeqEvent {
    /// The choice (0..n) this event belongs to.
    pub index: usize,
    pub token: Option<u32>,
    /// Newly releasable text (stop strings held back and never emitted).
    pub text: String,
    pub logprob: Option<TokenLogprob>,
    pub finish: Option<FinishReason>,
    /// The request's prompt tokens (the same for every choice: counted once per request).
    pub prompt_tokens: usize,
    /// Tokens this choice has generated so far.
    pub completion_tokens: usize,
}
