//! Chat-format training data (OpenAI's fine-tuning format: one `{"messages": [...]}` per line)
//! read once at the edge into checked records, and each record tokenized through the model's own
//! chat template into a `TrainExample` whose loss covers the assistant turns only (their contents
//! and the end-of-turn token the template writes after them). A bad line is an error naming the
//! line and the problem.

use super::batch::TrainExample;
use crate::error::{Error, Result};
use crate::model::{ChatMessage, ChatTemplate, Model, Tokenizer, CHATML};
use serde_json::Value;

/// One conversation; `train[i]` says whether message `i` is an assistant turn to learn.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRecord {
    pub messages: Vec<ChatMessage>,
    pub train: Vec<bool>,
}

const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// Parses a whole JSONL file; `param` names it in errors (`training_file`, `validation_file`).
pub fn parse_jsonl(text: &str, param: &str) -> Result<Vec<ChatRecord>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let rec =
            parse_line(line).map_err(|m| Error::invalid(param, format!("line {}: {m}", i + 1)))?;
        out.push(rec);
    }
    if out.is_empty() {
        return Err(Error::invalid(param, "the file holds no examples"));
    }
    Ok(out)
}

fn parse_line(line: &str) -> std::result::Result<ChatRecord, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON ({e})"))?;
    let obj = v
        .as_object()
        .ok_or("expected a JSON object with `messages`")?;
    for k in ["tools", "functions"] {
        if obj.get(k).is_some_and(|t| !t.is_null()) {
            return Err(format!("`{k}` is not supported in training examples"));
        }
    }
    let msgs = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("`messages` must be an array of messages")?;
    if msgs.is_empty() {
        return Err("`messages` is empty".into());
    }
    let (mut messages, mut train) = (Vec::new(), Vec::new());
    for (j, m) in msgs.iter().enumerate() {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .filter(|r| ROLES.contains(r))
            .ok_or_else(|| {
                format!("`messages[{j}].role` must be one of system, user, assistant, tool")
            })?;
        let content = m
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("`messages[{j}].content` must be a string"))?;
        let weight = match m.get("weight") {
            None | Some(Value::Null) => 1,
            Some(w) => match w.as_u64() {
                Some(w @ (0 | 1)) if role == "assistant" => w,
                _ => {
                    return Err(format!(
                        "`messages[{j}].weight` must be 0 or 1, on assistant messages only"
                    ))
                }
            },
        };
        train.push(role == "assistant" && weight == 1);
        messages.push(ChatMessage::text(role, content));
    }
    if !train.contains(&true) {
        return Err("no assistant message to train on".into());
    }
    Ok(ChatRecord { messages, train })
}

/// Length of the common prefix of two id sequences.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Tokenizes `rec` through the template. An assistant turn's targets run from where the
/// generation prompt ends to the first of `end_ids` the turn's own rendering holds (included).
/// Truncated to `max_len` tokens; `None` when no target is left.
pub fn encode(
    rec: &ChatRecord,
    tok: &Tokenizer,
    template: &ChatTemplate,
    end_ids: &[u32],
    max_len: usize,
) -> Result<Option<TrainExample>> {
    let ids_of = |msgs: &[ChatMessage], gen: bool| -> Result<Vec<u32>> {
        tok.encode_chat(&template.render_pieces(msgs, None, gen)?)
    };
    let ids = ids_of(&rec.messages, false)?;
    let mut loss = vec![false; ids.len()];
    for (i, _) in rec.train.iter().enumerate().filter(|(_, t)| **t) {
        let start = common_prefix(&ids_of(&rec.messages[..i], true)?, &ids);
        let turn_end = common_prefix(&ids_of(&rec.messages[..=i], false)?, &ids);
        let end = ids[start..turn_end]
            .iter()
            .position(|id| end_ids.contains(id))
            .map_or(turn_end, |p| start + p + 1);
        loss[start..end].fill(true);
    }
    let mut ex = TrainExample { ids, loss };
    ex.ids.truncate(max_len);
    ex.loss.truncate(max_len);
    Ok((ex.targets() > 0).then_some(ex))
}

/// A JSONL file's examples tokenized for `model` (its template, or ChatML when it has none);
/// also returns how many examples kept no target after truncation to `max_len` (dropped).
pub fn load_examples(
    model: &Model,
    text: &str,
    param: &str,
    max_len: usize,
) -> Result<(Vec<TrainExample>, usize)> {
    let records = parse_jsonl(text, param)?;
    let tok = model.tokenizer()?;
    let fallback;
    let template = match &model.template {
        Some(t) => t,
        None => {
            fallback = ChatTemplate::new(CHATML, "", "")?;
            &fallback
        }
    };
    let mut out = Vec::with_capacity(records.len());
    for (i, rec) in records.iter().enumerate() {
        let ex = encode(rec, tok, template, &model.eos_ids, max_len)
            .map_err(|e| Error::invalid(param, format!("example {}: {e}", i + 1)))?;
        out.extend(ex);
    }
    let dropped = records.len() - out.len();
    if out.is_empty() {
        return Err(Error::invalid(
            param,
            format!("no example keeps an assistant token within {max_len} tokens"),
        ));
    }
    Ok((out, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_are_named() {
        let cases = [
            (
                "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}",
                "line 2: no assistant message",
            ),
            ("not json", "line 2: not valid JSON"),
            (
                "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}",
                "line 2: `messages[0].role`",
            ),
            (
                "{\"messages\": [{\"role\": \"assistant\", \"content\": 3}]}",
                "line 2: `messages[0].content`",
            ),
            ("{\"messages\": []}", "line 2: `messages` is empty"),
            (
                "{\"messages\": [{\"role\": \"assistant\", \"content\": \"a\", \"weight\": 2}]}",
                "line 2: `messages[0].weight`",
            ),
        ];
        let good = "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}";
        assert_eq!(parse_jsonl(good, "training_file").unwrap().len(), 1);
        for (bad, want) in cases {
            let err = parse_jsonl(&format!("{good}\n{bad}\n"), "training_file")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(want) && err.contains("training_file"),
                "{bad}: {err}"
            );
        }
    }
}
