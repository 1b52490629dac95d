//! Tool calling at the edge: `tools`, `tool_choice`, `parallel_tool_calls` and the legacy
//! `functions`/`function_call`, checked once into a `ToolSetup`. What always holds: every tool is
//! a named function with an object schema; a named `tool_choice` names one of them; with
//! `required` or a named function the reply is constrained (a `Grammar` over the parser's call
//! format whose arguments follow each tool's schema), so even a small model returns valid calls;
//! with `auto` the reply is free and parsed afterwards. Templates that do not render tools get
//! them in a documented hermes-style system section (`tools_prompt`); past calls and tool results
//! are then written into the messages as the parser's family writes them.

use super::openai::{ChatRequest, FunctionDef, MessageIn};
use super::tool_parser::ToolCallParser;
use crate::engine::Grammar;
use crate::error::{Error, Result};
use crate::model::ChatMessage;
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

pub struct ToolSetup {
    pub functions: Vec<FunctionDef>,
    pub choice: ToolChoice,
    pub parallel: bool,
    /// Came as `functions`: answer with `function_call` (legacy shape).
    pub legacy: bool,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn check_functions(fs: &[FunctionDef], param: &str) -> Result<()> {
    if fs.len() > 128 {
        return Err(Error::invalid(param, "at most 128 tools"));
    }
    for (i, f) in fs.iter().enumerate() {
        if !valid_name(&f.name) {
            return Err(Error::invalid(
                format!("{param}[{i}].name"),
                "1 to 64 characters of a-z, A-Z, 0-9, _ and -",
            ));
        }
        if fs[..i].iter().any(|g| g.name == f.name) {
            return Err(Error::invalid(
                format!("{param}[{i}].name"),
                format!("duplicate function name `{}`", f.name),
            ));
        }
        if f.parameters.as_ref().is_some_and(|p| !p.is_object()) {
            return Err(Error::invalid(
                format!("{param}[{i}].parameters"),
                "must be a JSON schema object",
            ));
        }
    }
    Ok(())
}

/// `"none" | "auto" | "required" | {"type": "function", "function": {"name"}}` (or, legacy,
/// `{"name"}`), checked against the functions.
fn choice_of(v: Option<&Value>, fs: &[FunctionDef], param: &str) -> Result<ToolChoice> {
    let choice = match v {
        None => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" if param == "tool_choice" => ToolChoice::Required,
            other => {
                return Err(Error::invalid(
                    param,
                    format!(
                        "`{other}` is not supported (none, auto, required, or a named function)"
                    ),
                ))
            }
        },
        Some(o) => {
            let name = o
                .pointer("/function/name")
                .or_else(|| o.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    Error::invalid(
                        param,
                        "expected {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                })?;
            if !fs.iter().any(|f| f.name == name) {
                return Err(Error::invalid(
                    param,
                    format!("function `{name}` is not among the tools"),
                ));
            }
            ToolChoice::Named(name.to_string())
        }
    };
    Ok(choice)
}

impl ToolSetup {
    /// The request's tools, or `None` when it has none (or `tool_choice` is `none`).
    pub fn from_request(r: &ChatRequest) -> Result<Option<Self>> {
        let (functions, choice, legacy) = match (&r.tools, &r.functions) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "functions",
                    "give `tools` or the legacy `functions`, not both",
                ))
            }
            (Some(tools), None) => {
                for (i, t) in tools.iter().enumerate() {
                    if t.kind != "function" {
                        return Err(Error::invalid(
                            format!("tools[{i}].type"),
                            format!("`{}` is not supported (function)", t.kind),
                        ));
                    }
                }
                let fs: Vec<FunctionDef> = tools.iter().map(|t| t.function.clone()).collect();
                check_functions(&fs, "tools")?;
                let c = choice_of(r.tool_choice.as_ref(), &fs, "tool_choice")?;
                (fs, c, false)
            }
            (None, Some(fs)) => {
                check_functions(fs, "functions")?;
                let c = choice_of(r.function_call.as_ref(), fs, "function_call")?;
                (fs.clone(), c, true)
            }
            (None, None) => {
                return match (&r.tool_choice, &r.function_call) {
                    (Some(Value::String(s)), _) | (_, Some(Value::String(s))) if s == "none" => {
                        Ok(None)
                    }
                    (Some(_), _) => Err(Error::invalid("tool_choice", "requires `tools`")),
                    (_, Some(_)) => Err(Error::invalid("function_call", "requires `functions`")),
                    (None, None) => Ok(None),
                }
            }
        };
        if functions.is_empty() {
            return Err(Error::invalid(
                if legacy { "functions" } else { "tools" },
                "must not be empty",
            ));
        }
        if choice == ToolChoice::None {
            return Ok(None);
        }
        Ok(Some(ToolSetup {
            functions,
            choice,
            parallel: r.parallel_tool_calls.unwrap_or(true) && !legacy,
            legacy,
        }))
    }

    /// The tools as HF chat templates receive them.
    pub fn template_tools(&self) -> Value {
        self.functions
            .iter()
            .map(|f| json!({"type": "function", "function": function_json(f)}))
            .collect()
    }

    /// The grammar that makes the reply a valid call (`required` / a named function); `None`
    /// for `auto`.
    pub fn grammar(&self, parser: ToolCallParser) -> Option<Grammar> {
        let allowed: Vec<&FunctionDef> = match &self.choice {
            ToolChoice::Required => self.functions.iter().collect(),
            ToolChoice::Named(n) => self.functions.iter().filter(|f| &f.name == n).collect(),
            ToolChoice::None | ToolChoice::Auto => return None,
        };
        let key = parser.arguments_key();
        let calls: Vec<Value> = allowed
            .iter()
            .map(|f| {
                let params = f
                    .parameters
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object"}));
                json!({"type": "object",
                       "properties": {"name": {"const": f.name}, key: params},
                       "required": ["name", key], "additionalProperties": false})
            })
            .collect();
        let schema = json!({"anyOf": calls,
            "x-guidance": {"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}});
        let call = match parser {
            ToolCallParser::Hermes => {
                format!("\"<tool_call>\\n\" %json {schema} \"\\n</tool_call>\"")
            }
            ToolCallParser::Llama3Json => format!("%json {schema}"),
        };
        let sep = serde_json::to_string(parser.call_separator()).expect("string");
        let more = matches!(self.choice, ToolChoice::Required) && self.parallel;
        let start = if more {
            format!("call ({sep} call)*")
        } else {
            "call".into()
        };
        Some(Grammar::Lark(format!("start: {start}\ncall: {call}\n")))
    }
}

fn function_json(f: &FunctionDef) -> Value {
    let mut v = json!({"name": f.name, "parameters": f.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}}))});
    if let Some(d) = &f.description {
        v["description"] = json!(d);
    }
    v
}

/// The system-prompt section that shows the tools to a model whose template ignores them
/// (hermes-style, as Qwen2.5's and NousResearch's templates write it).
pub fn tools_prompt(setup: &ToolSetup, parser: ToolCallParser) -> String {
    let sigs: Vec<String> = setup
        .template_tools()
        .as_array()
        .expect("array")
        .iter()
        .map(|t| t.to_string())
        .collect();
    let example = parser.format_call("<function-name>", &json!("<args-json-object>"));
    format!(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{}\n</tools>\n\n\
         For each function call, return a json object with function name and arguments like this:\n{}",
        sigs.join("\n"),
        example.replace("\"<function-name>\"", "<function-name>").replace("\"<args-json-object>\"", "<args-json-object>")
    )
}

/// An assistant turn's `tool_calls` (or legacy `function_call`) in the template's form:
/// arguments as an object (HF templates apply `tojson` to them).
pub fn message_tool_calls(m: &MessageIn, i: usize) -> Result<Option<Value>> {
    let mut calls = Vec::new();
    for (j, c) in m.tool_calls.iter().flatten().enumerate() {
        if c.kind.as_deref().is_some_and(|k| k != "function") {
            return Err(Error::invalid(
                format!("messages[{i}].tool_calls[{j}].type"),
                "only `function` calls are supported",
            ));
        }
    }
    let listed = m
        .tool_calls
        .iter()
        .flatten()
        .map(|c| (c.id.clone(), &c.function));
    for (j, (id, f)) in listed
        .chain(m.function_call.iter().map(|f| (None, f)))
        .enumerate()
    {
        let args: Value = serde_json::from_str(&f.arguments).map_err(|_| {
            Error::invalid(
                format!("messages[{i}].tool_calls[{j}].function.arguments"),
                "must be a JSON object serialized as a string",
            )
        })?;
        calls.push(
            json!({"id": id.unwrap_or_else(|| format!("call_{j}")), "type": "function",
                          "function": {"name": f.name, "arguments": args}}),
        );
    }
    Ok((!calls.is_empty()).then_some(Value::Array(calls)))
}

/// For a template that renders no tools: past calls become assistant text in the parser's
/// format, tool results become a user turn of `<tool_response>` blocks (consecutive results
/// joined), and `system` gets the tools section.
pub fn inline_tools(
    messages: Vec<ChatMessage>,
    setup: Option<&ToolSetup>,
    parser: ToolCallParser,
) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    for m in messages {
        if m.role == "tool" {
            let block = format!("<tool_response>\n{}\n</tool_response>", m.content);
            match out.last_mut() {
                Some(prev) if prev.role == "user" && prev.content.ends_with("</tool_response>") => {
                    prev.content = format!("{}\n{block}", prev.content);
                }
                _ => out.push(ChatMessage::text("user", block)),
            }
            continue;
        }
        let mut m = m;
        if let Some(Value::Array(calls)) = m.tool_calls.take() {
            let written: Vec<String> = calls
                .iter()
                .map(|c| {
                    parser.format_call(
                        c["function"]["name"].as_str().unwrap_or(""),
                        &c["function"]["arguments"],
                    )
                })
                .collect();
            let sep = if m.content.is_empty() { "" } else { "\n" };
            m.content = format!(
                "{}{sep}{}",
                m.content,
                written.join(parser.call_separator())
            );
        }
        m.tool_call_id = None;
        m.name = None;
        out.push(m);
    }
    if let Some(setup) = setup {
        let section = tools_prompt(setup, parser);
        match out.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{section}", first.content)
            }
            _ => out.insert(0, ChatMessage::text("system", section)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> ToolSetup {
        ToolSetup {
            functions: vec![FunctionDef {
                name: "get_weather".into(),
                description: Some("Weather.".into()),
                parameters: Some(
                    json!({"type": "object", "properties": {"city": {"type": "string"}}}),
                ),
                strict: None,
            }],
            choice: ToolChoice::Auto,
            parallel: true,
            legacy: false,
        }
    }

    #[test]
    fn inlined_tools_calls_and_results() {
        let mut call = ChatMessage::text("assistant", "");
        call.tool_calls = Some(json!([{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]));
        let mut r1 = ChatMessage::text("tool", "{\"temp\": 18}");
        r1.tool_call_id = Some("call_1".into());
        let r2 = ChatMessage::text("tool", "second");
        let msgs = vec![ChatMessage::text("user", "Weather?"), call, r1, r2];
        let out = inline_tools(msgs, Some(&setup()), ToolCallParser::Hermes);
        let roles: Vec<&str> = out.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(
            out[0].content.starts_with("# Tools") && out[0].content.contains("\"get_weather\"")
        );
        // The past call is written as the parser reads it back.
        let (content, calls) = ToolCallParser::Hermes.parse(&out[2].content);
        assert_eq!(content, "");
        assert_eq!(
            (calls[0].name.as_str(), calls[0].arguments.as_str()),
            ("get_weather", "{\"city\":\"Paris\"}")
        );
        // Consecutive results share one user turn, in order.
        assert_eq!(
            out[3].content,
            "<tool_response>\n{\"temp\": 18}\n</tool_response>\n<tool_response>\nsecond\n</tool_response>"
        );
        assert!(out
            .iter()
            .all(|m| m.tool_calls.is_none() && m.tool_call_id.is_none()));
    }

    #[test]
    fn grammar_only_for_required_or_named() {
        let mut s = setup();
        assert!(s.grammar(ToolCallParser::Hermes).is_none());
        s.choice = ToolChoice::Required;
        let Some(Grammar::Lark(g)) = s.grammar(ToolCallParser::Hermes) else {
            panic!()
        };
        assert!(
            g.starts_with("start: call (\"\\n\" call)*") && g.contains("\"const\":\"get_weather\""),
            "{g}"
        );
        s.parallel = false;
        let Some(Grammar::Lark(g)) = s.grammar(ToolCallParser::Llama3Json) else {
            panic!()
        };
        assert!(
            g.starts_with("start: call\n") && g.contains("\"parameters\""),
            "{g}"
        );
    }
}
