//! Tool calls in a model's text, per model family (`--tool-call-parser`): `hermes`
//! (`<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, Qwen/Hermes/SmolLM) and
//! `llama3_json` (a bare `{"name": ..., "parameters": {...}}`, several joined by `;`). What always
//! holds: a call is reported only when its JSON parses, names a function and has object
//! arguments; anything else stays content. The streaming form (`ToolCallStream`) releases content
//! as soon as it cannot be part of a call and each call as soon as it is complete, and ends with
//! exactly what the whole-text `parse` gives.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[value(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ToolCallParser {
    #[default]
    Hermes,
    Llama3Json,
}

/// One parsed call; `arguments` is a JSON object serialized (OpenAI's wire form).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// A fresh OpenAI-style call id (`call_` + 24 alphanumerics).
pub fn call_id() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    format!("call_{}", Alphanumeric.sample_string(&mut rand::rng(), 24))
}

/// `{"name": ..., "arguments"|"parameters": {...}}` as a call (arguments may be a JSON string).
fn call_of(v: &Value) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = match v.get("arguments").or_else(|| v.get("parameters")) {
        None => Value::Object(Map::new()),
        Some(Value::String(s)) => serde_json::from_str(s).ok()?,
        Some(a) => a.clone(),
    };
    if name.is_empty() || !args.is_object() {
        return None;
    }
    Some(ToolCall {
        id: call_id(),
        name,
        arguments: args.to_string(),
    })
}

impl ToolCallParser {
    /// How the parser's calls are written (for prompts and grammars): the key of the arguments.
    pub fn arguments_key(self) -> &'static str {
        match self {
            ToolCallParser::Hermes => "arguments",
            ToolCallParser::Llama3Json => "parameters",
        }
    }

    /// One call written as this family writes it (rendering past assistant turns).
    pub fn format_call(self, name: &str, arguments: &Value) -> String {
        let body = serde_json::json!({"name": name, self.arguments_key(): arguments});
        match self {
            ToolCallParser::Hermes => format!("{OPEN}\n{body}\n{CLOSE}"),
            ToolCallParser::Llama3Json => body.to_string(),
        }
    }

    /// Separator between several calls of one turn.
    pub fn call_separator(self) -> &'static str {
        match self {
            ToolCallParser::Hermes => "\n",
            ToolCallParser::Llama3Json => "; ",
        }
    }

    /// The whole reply split into content (text outside the calls, trimmed) and calls.
    pub fn parse(self, text: &str) -> (String, Vec<ToolCall>) {
        let mut s = ToolCallStream::new(self);
        let (mut content, mut calls) = s.push(text);
        let (c, k) = s.finish();
        content.push_str(&c);
        calls.extend(k);
        (content.trim().to_string(), calls)
    }
}

/// Incremental parsing of a streamed reply.
pub struct ToolCallStream {
    parser: ToolCallParser,
    buf: String,
    in_call: bool,
    /// llama3_json: the reply is a JSON call list (first non-blank char `{`); held to the end.
    json_reply: Option<bool>,
}

impl ToolCallStream {
    pub fn new(parser: ToolCallParser) -> Self {
        ToolCallStream {
            parser,
            buf: String::new(),
            in_call: false,
            json_reply: None,
        }
    }

    /// Feeds new text; returns the content that is final and the calls completed by it.
    pub fn push(&mut self, delta: &str) -> (String, Vec<ToolCall>) {
        self.buf.push_str(delta);
        match self.parser {
            ToolCallParser::Hermes => self.push_hermes(),
            ToolCallParser::Llama3Json => {
                if self.json_reply.is_none() {
                    if let Some(c) = self.buf.trim_start().chars().next() {
                        self.json_reply = Some(c == '{');
                    }
                }
                match self.json_reply {
                    Some(false) => (std::mem::take(&mut self.buf), vec![]),
                    _ => (String::new(), vec![]),
                }
            }
        }
    }

    fn push_hermes(&mut self) -> (String, Vec<ToolCall>) {
        let (mut content, mut calls) = (String::new(), Vec::new());
        loop {
            if !self.in_call {
                if let Some(at) = self.buf.find(OPEN) {
                    content.push_str(&self.buf[..at]);
                    self.buf.drain(..at + OPEN.len());
                    self.in_call = true;
                    continue;
                }
                // Hold back a tail that may still become `<tool_call>`.
                let hold = (1..OPEN.len())
                    .rev()
                    .find(|&n| self.buf.ends_with(&OPEN[..n]))
                    .unwrap_or(0);
                let cut = self.buf.len() - hold;
                content.push_str(&self.buf[..cut]);
                self.buf.drain(..cut);
                return (content, calls);
            }
            let Some(at) = self.buf.find(CLOSE) else {
                return (content, calls);
            };
            let inner = self.buf[..at].to_string();
            self.buf.drain(..at + CLOSE.len());
            self.in_call = false;
            match serde_json::from_str::<Value>(inner.trim())
                .ok()
                .as_ref()
                .and_then(call_of)
            {
                Some(c) => calls.push(c),
                None => content.push_str(&format!("{OPEN}{inner}{CLOSE}")),
            }
        }
    }

    /// The end of the reply: what was held back, as content or calls.
    pub fn finish(&mut self) -> (String, Vec<ToolCall>) {
        let rest = std::mem::take(&mut self.buf);
        match self.parser {
            ToolCallParser::Hermes if self.in_call => {
                // An unterminated last call (the reply ended right after its JSON).
                self.in_call = false;
                match serde_json::from_str::<Value>(rest.trim())
                    .ok()
                    .as_ref()
                    .and_then(call_of)
                {
                    Some(c) => (String::new(), vec![c]),
                    None => (format!("{OPEN}{rest}"), vec![]),
                }
            }
            ToolCallParser::Hermes => (rest, vec![]),
            ToolCallParser::Llama3Json => match llama3_calls(&rest) {
                Some(calls) => (String::new(), calls),
                None => (rest, vec![]),
            },
        }
    }
}

/// `{...}` or `{...}; {...}` where every object is a call; `None` otherwise.
fn llama3_calls(text: &str) -> Option<Vec<ToolCall>> {
    let text = text.trim().trim_start_matches("<|python_tag|>");
    if !text.starts_with('{') {
        return None;
    }
    let mut calls = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut it = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let v = it.next()?.ok()?;
        calls.push(call_of(&v)?);
        rest = rest[it.byte_offset()..].trim_start();
        rest = rest.strip_prefix(';').unwrap_or(rest).trim_start();
    }
    Some(calls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names_args(calls: &[ToolCall]) -> Vec<(String, Value)> {
        calls
            .iter()
            .map(|c| (c.name.clone(), serde_json::from_str(&c.arguments).unwrap()))
            .collect()
    }

    #[test]
    fn hermes_calls_and_content() {
        let text = "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"time\", \"arguments\": \"{}\"}\n</tool_call>";
        let (content, calls) = ToolCallParser::Hermes.parse(text);
        assert_eq!(content, "Let me look.");
        assert_eq!(
            names_args(&calls),
            vec![
                ("get_weather".into(), json!({"city": "Paris"})),
                ("time".into(), json!({}))
            ]
        );
        assert!(calls[0].id.starts_with("call_") && calls[0].id != calls[1].id);
        // Broken JSON, a missing name or non-object arguments stay content.
        for bad in [
            "<tool_call>{\"name\": \"f\", \"arguments\": {</tool_call>",
            "<tool_call>{\"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>",
        ] {
            let (content, calls) = ToolCallParser::Hermes.parse(bad);
            assert!(calls.is_empty(), "{bad}");
            assert_eq!(content, bad);
        }
        // An unterminated last call is still a call.
        let (_, calls) = ToolCallParser::Hermes
            .parse("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}");
        assert_eq!(names_args(&calls), vec![("f".into(), json!({"a": 1}))]);
        assert_eq!(
            ToolCallParser::Hermes.parse("plain <tool text"),
            ("plain <tool text".into(), vec![])
        );
    }

    #[test]
    fn llama3_json_calls() {
        let p = ToolCallParser::Llama3Json;
        let (content, calls) = p.parse(
            " {\"name\": \"f\", \"parameters\": {\"x\": 2}}; {\"name\": \"g\", \"parameters\": {}}",
        );
        assert_eq!(content, "");
        assert_eq!(
            names_args(&calls),
            vec![("f".into(), json!({"x": 2})), ("g".into(), json!({}))]
        );
        let (content, calls) = p.parse("{\"not\": \"a call\"}");
        assert!(calls.is_empty());
        assert_eq!(content, "{\"not\": \"a call\"}");
        assert_eq!(p.parse("Hello {x}"), ("Hello {x}".into(), vec![]));
    }

    #[test]
    fn streaming_in_any_pieces_equals_whole_text() {
        let text = "Sure <tool_call>\n{\"name\": \"f\", \"arguments\": {\"q\": \"<tool_call>?\"}}\n</tool_call> done <tool_ca";
        for parser in [ToolCallParser::Hermes, ToolCallParser::Llama3Json] {
            let (want_content, want_calls) = parser.parse(text);
            for step in [1, 2, 3, 7, 64] {
                let mut s = ToolCallStream::new(parser);
                let (mut content, mut calls) = (String::new(), vec![]);
                let chars: Vec<char> = text.chars().collect();
                for piece in chars.chunks(step) {
                    let (c, k) = s.push(&piece.iter().collect::<String>());
                    // Hermes: content released early never contains the start of a call.
                    assert!(parser != ToolCallParser::Hermes || !c.contains(OPEN), "{c}");
                    content.push_str(&c);
                    calls.extend(k);
                }
                let (c, k) = s.finish();
                content.push_str(&c);
                calls.extend(k);
                assert_eq!(content.trim(), want_content, "{parser:?} step {step}");
                assert_eq!(names_args(&calls), names_args(&want_calls));
            }
        }
    }
}
