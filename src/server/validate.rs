//! The edge: OpenAI request bodies become `ValidRequest`s (token ids, resolved adapters, checked
//! sampling parameters) here and only here. Every rejection names the offending field.
//! What always holds for a `ValidRequest`: chat contents were tokenized as plain text (only the
//! template's markup yields special tokens; `/v1/completions` prompts are tokenized with special
//! tokens read as such, as vLLM does: they are raw prompts); each prompt fits the context and its
//! `max_tokens` is clamped to what is left of it, so metering reserves the clamped value; stop
//! strings are at most `MAX_STOP_BYTES` long.

use super::openai::{
    ChatRequest, CommonParams, CompletionRequest, Content, MessageIn, PromptSpec, StopSpec,
};
use super::state::AppState;
use super::structured::requested_grammar;
use super::tool_parser::ToolCallParser;
use super::tools::{inline_tools, message_tool_calls, ToolSetup};
use crate::engine::Grammar;
use crate::engine::{GenerateRequest, SamplingParams, MAX_N};
use crate::error::{Error, Result};
use crate::lora::AdapterRef;
use crate::model::{ChatMessage, PromptPiece};

/// Longest stop string, in bytes (each is checked against the output's tail on every token).
pub const MAX_STOP_BYTES: usize = 256;

/// Parses a JSON body, naming the field on a type error.
pub fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let param = if path == "." {
            "body".to_string()
        } else {
            path
        };
        Error::invalid(param, e.inner().to_string())
    })
}

pub struct ValidRequest {
    /// One generation per prompt (completions may carry several prompts).
    pub gens: Vec<GenerateRequest>,
    /// The `model` echoed back.
    pub model: String,
    /// Metric label: adapter name(s) or "base".
    pub adapter_label: String,
    pub stream: bool,
    pub include_usage: bool,
    /// Chat: logprobs requested (top-N in params).
    pub logprobs: bool,
    /// `best_of` > `n`: each generation runs `best_of` choices (`params.n`) and the response keeps
    /// the `n` with the highest mean token logprob. `None`: every choice is returned.
    pub best_of_keep: Option<usize>,
    /// Chat with tools: how to read tool calls out of the reply.
    pub tools: Option<ToolReply>,
}

/// How a chat reply with tools is answered.
#[derive(Debug, Clone, Copy)]
pub struct ToolReply {
    pub parser: ToolCallParser,
    /// Legacy `functions`: answer with `message.function_call` (the first call).
    pub legacy: bool,
}

fn resolve_adapters(
    state: &AppState,
    c: &CommonParams,
) -> Result<(Vec<(AdapterRef, f32)>, String)> {
    let base = &state.model_name;
    let mut mix = Vec::new();
    if let Some(list) = &c.adapters {
        if c.model != *base {
            return Err(Error::invalid(
                "adapters",
                "use `adapters` with the base model's name as `model`",
            ));
        }
        if list.is_empty() || list.len() > 8 {
            return Err(Error::invalid("adapters", "between 1 and 8 adapters"));
        }
        for a in list {
            if !a.weight.is_finite() || a.weight.abs() > 10.0 {
                return Err(Error::invalid(
                    "adapters.weight",
                    "must be finite and in [-10, 10]",
                ));
            }
            mix.push((state.registry.resolve(&a.id)?, a.weight));
        }
    } else if c.model != *base {
        let name = c
            .model
            .strip_prefix(&format!("{base}:"))
            .unwrap_or(&c.model);
        mix.push((state.registry.resolve(name)?, 1.0));
    }
    let label = if mix.is_empty() {
        "base".to_string()
    } else {
        mix.iter()
            .map(|(a, _)| a.name())
            .collect::<Vec<_>>()
            .join("+")
    };
    Ok((mix, label))
}

fn sampling(c: &CommonParams, default_max: usize) -> Result<SamplingParams> {
    let n = c.n.unwrap_or(1);
    if !(1..=MAX_N as i64).contains(&n) {
        return Err(Error::invalid(
            "n",
            format!("must be between 1 and {MAX_N}"),
        ));
    }
    let max = c.max_completion_tokens.or(c.max_tokens);
    if max.is_some_and(|m| m < 1) {
        return Err(Error::invalid(
            if c.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            },
            "must be at least 1",
        ));
    }
    if c.top_k.is_some_and(|k| k < -1) {
        return Err(Error::invalid("top_k", "must be -1, 0 or positive"));
    }
    let stop = match &c.stop {
        None => vec![],
        Some(StopSpec::One(s)) => vec![s.clone()],
        Some(StopSpec::Many(v)) => v.clone(),
    };
    if stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
        return Err(Error::invalid(
            "stop",
            format!("each stop string has at most {MAX_STOP_BYTES} bytes"),
        ));
    }
    let p = SamplingParams {
        temperature: c.temperature.unwrap_or(1.0),
        top_k: c.top_k.unwrap_or(0).max(0) as usize,
        top_p: c.top_p.unwrap_or(1.0),
        min_p: c.min_p.unwrap_or(0.0),
        seed: c.seed.map(|s| s as u64),
        presence_penalty: c.presence_penalty.unwrap_or(0.0),
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
        repetition_penalty: c.repetition_penalty.unwrap_or(1.0),
        max_tokens: max.map_or(default_max, |m| m as usize),
        stop,
        ignore_eos: c.ignore_eos.unwrap_or(false),
        n: n as usize,
        ..Default::default()
    };
    p.validate()?;
    Ok(p)
}

/// Refuses a prompt that leaves no room to generate and clamps `max_tokens` to the room left.
fn fit_context(state: &AppState, g: &mut GenerateRequest) -> Result<()> {
    let max = state.max_context;
    let len = g.prompt_ids.len();
    if len >= max {
        return Err(Error::ContextLength(format!(
            "This model's maximum context length is {max} tokens. However, your prompt has {len} tokens."
        )));
    }
    g.params.max_tokens = g.params.max_tokens.min(max - len);
    Ok(())
}

/// The cheap bound before tokenizing: a text too long to fit the context whatever it tokenizes
/// to is rejected without spending the CPU on it (the exact check is the engine's, on tokens).
fn check_prompt_chars(state: &AppState, text: &str) -> Result<()> {
    // Bytes bound characters from above: only count them when the bytes alone exceed the bound.
    if text.len() > state.max_prompt_chars && text.chars().count() > state.max_prompt_chars {
        return Err(Error::ContextLength(format!(
            "This model's maximum context length is {} tokens. However, your prompt ({} characters) is certainly longer.",
            state.engine.max_seq_len(),
            text.chars().count()
        )));
    }
    Ok(())
}

impl ValidRequest {
    pub fn chat(state: &AppState, r: ChatRequest) -> Result<Self> {
        let (mix, adapter_label) = resolve_adapters(state, &r.common)?;
        let mut params = sampling(&r.common, state.default_max_tokens)?;
        if r.messages.is_empty() {
            return Err(Error::invalid(
                "messages",
                "must contain at least one message",
            ));
        }
        let messages = r
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| chat_message(i, m))
            .collect::<Result<Vec<_>>>()?;
        let setup = ToolSetup::from_request(&r)?;
        let parser = state.opts.tool_call_parser;
        let model = state.engine.model();
        let template = model.template.as_ref().ok_or_else(|| {
            Error::invalid(
                "messages",
                "this model has no chat template; use /v1/completions",
            )
        })?;
        let pieces = if template.mentions("tools") && template.mentions("tool_calls") {
            let tools = setup.as_ref().map(ToolSetup::template_tools);
            no_special_markup(model.tokenizer()?, tools.as_ref(), &messages)?;
            template.render_pieces(&messages, tools.as_ref(), true)?
        } else {
            // The template renders no tools: they go into the messages, hermes-style.
            let messages = inline_tools(messages, setup.as_ref(), parser);
            template.render_pieces(&messages, None, true)?
        };
        params.constraint = constraint(state, &r.common, setup.as_ref(), parser)?;
        let chars: usize = pieces
            .iter()
            .map(|p| match p {
                PromptPiece::Markup(s) | PromptPiece::Content(s) => s.len(),
            })
            .sum();
        if chars > state.max_prompt_chars {
            let text: String = pieces
                .iter()
                .map(|p| match p {
                    PromptPiece::Markup(s) | PromptPiece::Content(s) => s.as_str(),
                })
                .collect();
            check_prompt_chars(state, &text)?;
        }
        let prompt_ids = model.tokenizer()?.encode_chat(&pieces)?;
        if r.logprobs == Some(true) {
            let n = r.top_logprobs.unwrap_or(0);
            if !(0..=20).contains(&n) {
                return Err(Error::invalid("top_logprobs", "must be between 0 and 20"));
            }
            params.logprobs = Some(n as usize);
        } else if r.top_logprobs.is_some() {
            return Err(Error::invalid("top_logprobs", "requires logprobs: true"));
        }
        let mut gen = GenerateRequest {
            prompt_ids,
            adapters: mix,
            params,
        };
        fit_context(state, &mut gen)?;
        let tools = setup.as_ref().map(|t| ToolReply {
            parser,
            legacy: t.legacy,
        });
        Ok(ValidRequest {
            logprobs: gen.params.logprobs.is_some(),
            tools,
            best_of_keep: None,
            gens: vec![gen],
            model: r.common.model.clone(),
            adapter_label,
            stream: r.common.stream,
            include_usage: r
                .common
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        })
    }

    pub fn completion(state: &AppState, r: CompletionRequest) -> Result<Self> {
        let (mix, adapter_label) = resolve_adapters(state, &r.common)?;
        let mut params = sampling(&r.common, 16)?;
        if r.echo == Some(true) {
            return Err(Error::invalid("echo", "echo is not supported"));
        }
        if r.suffix.is_some() {
            return Err(Error::invalid("suffix", "suffix is not supported"));
        }
        let best_of_keep = match r.best_of {
            None => None,
            Some(b) if b == params.n as i64 => None,
            Some(b) if b < params.n as i64 || b > MAX_N as i64 => {
                return Err(Error::invalid(
                    "best_of",
                    format!("must be between n and {MAX_N}"),
                ))
            }
            Some(_) if r.common.stream => {
                return Err(Error::invalid(
                    "best_of",
                    "best_of greater than n cannot be streamed",
                ))
            }
            Some(b) => Some(std::mem::replace(&mut params.n, b as usize)),
        };
        if let Some(n) = r.logprobs {
            if !(0..=5).contains(&n) {
                return Err(Error::invalid("logprobs", "must be between 0 and 5"));
            }
            params.logprobs = Some(n as usize);
        }
        params.constraint = constraint(state, &r.common, None, ToolCallParser::default())?;
        let logprobs = params.logprobs.is_some();
        if best_of_keep.is_some() {
            // Ranking the choices needs each token's logprob (returned only when asked for).
            params.logprobs.get_or_insert(0);
        }
        let model = state.engine.model();
        let encode = |t: &str| {
            check_prompt_chars(state, t)?;
            model.tokenizer().and_then(|tok| tok.encode(t, false))
        };
        let prompts: Vec<Vec<u32>> = match r.prompt {
            PromptSpec::Text(t) => vec![encode(&t)?],
            PromptSpec::Texts(ts) => ts.iter().map(|t| encode(t)).collect::<Result<_>>()?,
            PromptSpec::Ids(ids) => vec![ids],
            PromptSpec::IdLists(l) => l,
        };
        if prompts.is_empty() || prompts.len() > 16 {
            return Err(Error::invalid("prompt", "between 1 and 16 prompts"));
        }
        let mut gens: Vec<GenerateRequest> = prompts
            .into_iter()
            .map(|prompt_ids| GenerateRequest {
                prompt_ids,
                adapters: mix.clone(),
                params: params.clone(),
            })
            .collect();
        for g in &mut gens {
            fit_context(state, g)?;
        }
        Ok(ValidRequest {
            logprobs,
            best_of_keep,
            tools: None,
            gens,
            model: r.common.model.clone(),
            adapter_label,
            stream: r.common.stream,
            include_usage: r
                .common
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        })
    }
}

/// One chat message as the template sees it: roles checked, text parts joined, tool calls and
/// tool results kept (legacy `function` results become `tool` results).
fn chat_message(i: usize, m: &MessageIn) -> Result<ChatMessage> {
    let role = match m.role.as_str() {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "tool" | "function" => "tool",
        other => {
            return Err(Error::invalid(
                format!("messages[{i}].role"),
                format!("`{other}` is not supported (system, developer, user, assistant, tool)"),
            ))
        }
    };
    let content = match &m.content {
        None => String::new(),
        Some(Content::Text(t)) => t.clone(),
        Some(Content::Parts(parts)) => {
            let mut s = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => s.push_str(t),
                    _ => {
                        return Err(Error::invalid(
                            format!("messages[{i}].content[{j}]"),
                            "only text parts are supported",
                        ))
                    }
                }
            }
            s
        }
    };
    if (m.tool_calls.is_some() || m.function_call.is_some()) && role != "assistant" {
        return Err(Error::invalid(
            format!("messages[{i}].tool_calls"),
            "only assistant messages carry tool calls",
        ));
    }
    if role == "tool" && m.role == "tool" && m.tool_call_id.is_none() {
        return Err(Error::invalid(
            format!("messages[{i}].tool_call_id"),
            "required for a tool message",
        ));
    }
    Ok(ChatMessage {
        role: role.into(),
        content,
        tool_calls: message_tool_calls(m, i)?,
        tool_call_id: m.tool_call_id.clone(),
        name: m.name.clone(),
    })
}

/// The request's grammar (a structured output, or the tool calls `required`/a named function
/// demands), compiled: a grammar llguidance refuses is a 400 naming the field it came from.
fn constraint(
    state: &AppState,
    c: &CommonParams,
    tools: Option<&ToolSetup>,
    parser: ToolCallParser,
) -> Result<Option<crate::engine::Constraint>> {
    let asked = requested_grammar(c)?;
    let forced = tools.and_then(|t| t.grammar(parser));
    let (grammar, param): (Grammar, String) = match (asked, forced) {
        (None, None) => return Ok(None),
        (Some(a), None) => (a.grammar, a.param),
        (None, Some(g)) => (g, "tools".into()),
        (Some(a), Some(_)) => {
            return Err(Error::invalid(
                a.param,
                "cannot be combined with `tool_choice` `required` or a named function",
            ))
        }
    };
    Ok(Some(state.grammar_compiler()?.compile(&grammar, &param)?))
}

/// A template that renders tools and past calls itself writes them as markup, where special-token
/// text would become special tokens: such text in them is refused (contents stay plain text).
fn no_special_markup(
    tok: &crate::model::Tokenizer,
    tools: Option<&serde_json::Value>,
    messages: &[ChatMessage],
) -> Result<()> {
    if tools.is_some_and(|t| tok.has_special_text(&t.to_string())) {
        return Err(Error::invalid(
            "tools",
            "must not contain special-token text",
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        let calls = m.tool_calls.as_ref().map(|c| c.to_string());
        let fields = [
            calls.as_deref(),
            m.tool_call_id.as_deref(),
            m.name.as_deref(),
        ];
        if fields.iter().flatten().any(|f| tok.has_special_text(f)) {
            return Err(Error::invalid(
                format!("messages[{i}]"),
                "tool calls, ids and names must not contain special-token text",
            ));
        }
    }
    Ok(())
}
