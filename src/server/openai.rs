//! OpenAI wire types: request bodies as clients send them (lenient: unknown fields ignored) and
//! the response/chunk shapes exactly as OpenAI returns them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct MessageIn {
    pub role: String,
    pub content: Option<Content>,
    /// An assistant turn's tool calls.
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// A `tool` turn: the call it answers.
    pub tool_call_id: Option<String>,
    /// A `tool`/`function` turn: the function's name.
    pub name: Option<String>,
    /// Legacy: an assistant turn's function call.
    pub function_call: Option<FunctionCallIn>,
}

#[derive(Debug, Deserialize, Clone)]
pub struct FunctionCallIn {
    pub name: String,
    /// The arguments as a JSON string (OpenAI's wire form).
    pub arguments: String,
}

#[derive(Debug, Deserialize)]
pub struct ToolCallIn {
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub function: FunctionCallIn,
}

/// A function the model may call (`tools[i].function`, or a legacy `functions[i]`).
#[derive(Debug, Deserialize, Clone)]
pub struct FunctionDef {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Option<serde_json::Value>,
    /// Accepted: constrained calls (`required`, a named function) always follow the schema.
    #[allow(dead_code)]
    pub strict: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct ToolDef {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionDef,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct AdapterWeight {
    pub id: String,
    #[serde(default = "one")]
    pub weight: f32,
}

fn one() -> f32 {
    1.0
}

/// Sampling fields shared by chat and completions.
#[derive(Debug, Deserialize, Default)]
pub struct CommonParams {
    pub model: String,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub stop: Option<StopSpec>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub n: Option<i64>,
    /// Accepted for compatibility; not used yet.
    #[allow(dead_code)]
    pub user: Option<String>,
    /// Extension: a weighted combination of adapters.
    pub adapters: Option<Vec<AdapterWeight>>,
    /// Extension (as in vLLM and llama.cpp): keep generating past end-of-sequence tokens.
    pub ignore_eos: Option<bool>,
    /// Structured output (`{"type": "text" | "json_object" | "json_schema", ...}`).
    pub response_format: Option<serde_json::Value>,
    /// vLLM's structured-output extensions.
    pub guided_json: Option<serde_json::Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    pub guided_grammar: Option<String>,
    pub structured_outputs: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<MessageIn>,
    pub tools: Option<Vec<ToolDef>>,
    /// `"none" | "auto" | "required" | {"type": "function", "function": {"name": ...}}`.
    pub tool_choice: Option<serde_json::Value>,
    pub parallel_tool_calls: Option<bool>,
    /// Legacy function calling: mapped onto `tools` / `tool_choice`.
    pub functions: Option<Vec<FunctionDef>>,
    pub function_call: Option<serde_json::Value>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    #[serde(flatten)]
    pub common: CommonParams,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptSpec {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: PromptSpec,
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub best_of: Option<i64>,
    #[serde(flatten)]
    pub common: CommonParams,
}

#[derive(Debug, Serialize, Clone, Copy, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt: usize, completion: usize) -> Self {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct LoadAdapterRequest {
    pub lora_name: String,
    pub lora_path: String,
    /// vLLM's flag: replace the adapter already registered under `lora_name`.
    #[serde(default)]
    pub load_inplace: bool,
}

#[derive(Debug, Deserialize)]
pub struct UnloadAdapterRequest {
    pub lora_name: String,
}
