//! The assistant message of a chat reply, whole (`message`) or as stream deltas (`ChatDeltas`).
//! What always holds: without tools the text is the content, unchanged; with tools, calls found
//! by the `--tool-call-parser` become `tool_calls` (ids `call_...`, arguments a JSON object
//! serialized) or, for legacy `functions`, one `function_call`, the rest stays content, and a
//! reply that ended normally with calls finishes with `tool_calls` (`function_call`). A streamed
//! reply carries the same calls and content as the whole one.

use super::tool_parser::{ToolCall, ToolCallStream};
use super::validate::ToolReply;
use crate::engine::FinishReason;
use serde_json::{json, Value};

fn finish_reason(
    tools: Option<ToolReply>,
    any_call: bool,
    finish: Option<FinishReason>,
) -> Option<&'static str> {
    match (tools, finish) {
        (Some(t), Some(FinishReason::Stop)) if any_call => Some(if t.legacy {
            "function_call"
        } else {
            "tool_calls"
        }),
        (_, f) => f.map(FinishReason::as_str),
    }
}

fn calls_json(calls: &[ToolCall], first_index: usize) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(k, c)| {
            json!({"index": first_index + k, "id": c.id, "type": "function",
                   "function": {"name": c.name, "arguments": c.arguments}})
        })
        .collect()
}

fn legacy_call(c: &ToolCall) -> Value {
    json!({"name": c.name, "arguments": c.arguments})
}

/// The whole message and its finish reason.
pub fn message(
    tools: Option<ToolReply>,
    text: &str,
    finish: Option<FinishReason>,
) -> (Value, Option<&'static str>) {
    let Some(t) = tools else {
        return (
            json!({"role": "assistant", "content": text}),
            finish.map(FinishReason::as_str),
        );
    };
    let (content, calls) = t.parser.parse(text);
    let mut m = json!({"role": "assistant",
        "content": if calls.is_empty() || !content.is_empty() { json!(content) } else { Value::Null }});
    if let (true, Some(c)) = (t.legacy, calls.first()) {
        m["function_call"] = legacy_call(c);
    } else if !calls.is_empty() {
        m["tool_calls"] = calls_json(&calls, 0);
    }
    (m, finish_reason(tools, !calls.is_empty(), finish))
}

/// Stream deltas of one chat choice.
pub struct ChatDeltas {
    tools: Option<(ToolReply, ToolCallStream)>,
    calls: usize,
}

impl ChatDeltas {
    pub fn new(tools: Option<ToolReply>) -> Self {
        ChatDeltas {
            tools: tools.map(|t| (t, ToolCallStream::new(t.parser))),
            calls: 0,
        }
    }

    /// The delta for one event's text (the last event has `finish`), and the finish reason.
    pub fn delta(
        &mut self,
        text: &str,
        finish: Option<FinishReason>,
    ) -> (Value, Option<&'static str>) {
        let Some((t, stream)) = self.tools.as_mut() else {
            let d = match text.is_empty() && finish.is_some() {
                true => json!({}),
                false => json!({"content": text}),
            };
            return (d, finish.map(FinishReason::as_str));
        };
        let (mut content, mut calls) = stream.push(text);
        if finish.is_some() {
            let (c, k) = stream.finish();
            content.push_str(&c);
            calls.extend(k);
        }
        let mut d = json!({});
        if !content.is_empty() || (calls.is_empty() && finish.is_none()) {
            d["content"] = json!(content);
        }
        if t.legacy {
            // One call only, as the legacy API has.
            if let Some(c) = calls.first().filter(|_| self.calls == 0) {
                d["function_call"] = legacy_call(c);
            }
        } else if !calls.is_empty() {
            d["tool_calls"] = calls_json(&calls, self.calls);
        }
        self.calls += calls.len();
        let reason = finish_reason(Some(*t), self.calls > 0, finish);
        (d, reason)
    }
}
