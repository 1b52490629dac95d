//! Structured-output fields of a request, read once: OpenAI's `response_format` (`text`,
//! `json_object`, `json_schema`) and vLLM's extensions (`guided_json`, `guided_regex`,
//! `guided_choice`, `guided_grammar`, or the `structured_outputs` object). What always holds: a
//! request asks for at most one of them, and each becomes one `Grammar` tagged with the field it
//! came from (so a grammar llguidance refuses is a 400 naming that field), or an error — never
//! silent free text.

use super::openai::CommonParams;
use crate::engine::Grammar;
use crate::error::{Error, Result};
use serde_json::{json, Value};

/// The grammar a request asks for and the field that asked (for errors).
pub struct GrammarRequest {
    pub grammar: Grammar,
    pub param: String,
}

fn invalid(param: &str, msg: impl Into<String>) -> Error {
    Error::invalid(param, msg)
}

/// A schema given as a JSON object/boolean, or as a string holding one (vLLM accepts both).
fn schema_value(v: &Value, param: &str) -> Result<Value> {
    let v = match v {
        Value::String(s) => serde_json::from_str(s)
            .map_err(|e| invalid(param, format!("not a JSON schema: {e}")))?,
        v => v.clone(),
    };
    match v {
        Value::Object(_) | Value::Bool(_) => Ok(v),
        _ => Err(invalid(param, "must be a JSON schema (an object)")),
    }
}

fn response_format(rf: &Value) -> Result<Option<GrammarRequest>> {
    let kind = rf.get("type").and_then(Value::as_str).ok_or_else(|| {
        invalid(
            "response_format.type",
            "required: `text`, `json_object` or `json_schema`",
        )
    })?;
    let (grammar, param) = match kind {
        "text" => return Ok(None),
        "json_object" => (
            Grammar::JsonSchema(json!({"type": "object"})),
            "response_format",
        ),
        "json_schema" => {
            let js = rf.get("json_schema").ok_or_else(|| {
                invalid(
                    "response_format.json_schema",
                    "required when type is `json_schema`",
                )
            })?;
            if let Some(name) = js.get("name") {
                let ok = name.as_str().is_some_and(|n| {
                    !n.is_empty()
                        && n.len() <= 64
                        && n.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                });
                if !ok {
                    return Err(invalid(
                        "response_format.json_schema.name",
                        "1 to 64 characters of a-z, A-Z, 0-9, _ and -",
                    ));
                }
            }
            let param = "response_format.json_schema.schema";
            let schema = match js.get("schema") {
                Some(s) => schema_value(s, param)?,
                None => json!({}),
            };
            (Grammar::JsonSchema(schema), param)
        }
        other => {
            return Err(invalid(
                "response_format.type",
                format!("`{other}` is not supported (text, json_object, json_schema)"),
            ))
        }
    };
    Ok(Some(GrammarRequest {
        grammar,
        param: param.into(),
    }))
}

fn choice(list: &[Value], param: &str) -> Result<Grammar> {
    let strings: Option<Vec<String>> = list.iter().map(|v| v.as_str().map(String::from)).collect();
    match strings {
        Some(c) if !c.is_empty() && c.len() <= 1024 => Ok(Grammar::Choice(c)),
        _ => Err(invalid(param, "a list of 1 to 1024 strings")),
    }
}

/// vLLM's `structured_outputs` object: exactly one of json, regex, choice, grammar, json_object.
fn structured_outputs(so: &Value) -> Result<GrammarRequest> {
    let obj = so
        .as_object()
        .ok_or_else(|| invalid("structured_outputs", "must be an object"))?;
    let mut found = Vec::new();
    for (k, v) in obj {
        let param = format!("structured_outputs.{k}");
        let g = match (k.as_str(), v) {
            (_, Value::Null) => continue,
            ("json", v) => Grammar::JsonSchema(schema_value(v, &param)?),
            ("regex", Value::String(r)) => Grammar::Regex(r.clone()),
            ("choice", Value::Array(l)) => choice(l, &param)?,
            ("grammar", Value::String(g)) => Grammar::Lark(g.clone()),
            ("json_object", Value::Bool(true)) => Grammar::JsonSchema(json!({"type": "object"})),
            ("json_object", Value::Bool(false)) => continue,
            // Options that do not change what is generated.
            (
                "disable_fallback"
                | "disable_any_whitespace"
                | "disable_additional_properties"
                | "whitespace_pattern",
                _,
            ) => continue,
            ("regex" | "choice" | "grammar" | "json_object", _) => {
                return Err(invalid(&param, "has the wrong type"))
            }
            (other, _) => {
                return Err(invalid(
                    &param,
                    format!(
                        "`{other}` is not supported (json, regex, choice, grammar, json_object)"
                    ),
                ))
            }
        };
        found.push(GrammarRequest { grammar: g, param });
    }
    if found.len() > 1 {
        return Err(invalid(
            "structured_outputs",
            "give only one of json, regex, choice, grammar, json_object",
        ));
    }
    found.pop().ok_or_else(|| {
        invalid(
            "structured_outputs",
            "give one of json, regex, choice, grammar, json_object",
        )
    })
}

/// The one grammar a request asks for, if any.
pub fn requested_grammar(c: &CommonParams) -> Result<Option<GrammarRequest>> {
    let mut found: Vec<GrammarRequest> = Vec::new();
    let mut push = |g: Grammar, p: &str| {
        found.push(GrammarRequest {
            grammar: g,
            param: p.into(),
        })
    };
    if let Some(v) = &c.guided_json {
        push(
            Grammar::JsonSchema(schema_value(v, "guided_json")?),
            "guided_json",
        );
    }
    if let Some(r) = &c.guided_regex {
        push(Grammar::Regex(r.clone()), "guided_regex");
    }
    if let Some(l) = &c.guided_choice {
        let l: Vec<Value> = l.iter().cloned().map(Value::String).collect();
        push(choice(&l, "guided_choice")?, "guided_choice");
    }
    if let Some(g) = &c.guided_grammar {
        push(Grammar::Lark(g.clone()), "guided_grammar");
    }
    if let Some(so) = &c.structured_outputs {
        found.push(structured_outputs(so)?);
    }
    if let Some(rf) = &c.response_format {
        found.extend(response_format(rf)?);
    }
    if found.len() > 1 {
        return Err(invalid(
            &found[1].param,
            format!(
                "conflicts with `{}`: give one structured-output constraint",
                found[0].param
            ),
        ));
    }
    Ok(found.pop())
}
