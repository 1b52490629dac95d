//! Structured outputs in mixed batches on the real SmolLM2: constrained rows (a JSON schema, a
//! choice) and free rows of different adapters, greedy and seeded, arriving over time. Every free
//! row must give exactly the tokens it gives alone; every constrained row must give the same
//! tokens alone as in the batch, and text that satisfies its grammar (checked independently with
//! serde_json and plain string comparison, not with llguidance).

mod common;
use common::*;
use openlora::engine::{Grammar, GrammarCompiler, LlmEngine, SamplingParams, SeqId};
use openlora::exec::DeviceKind;
use openlora::lora::{random_adapter, LoraAdapter};
use openlora::model::{ChatMessage, Model};
use serde_json::{json, Value};
use std::sync::Arc;

fn chat_prompt(model: &Model, text: &str) -> Vec<u32> {
    let t = model.template.as_ref().unwrap();
    let pieces = t
        .render_pieces(&[ChatMessage::text("user", text)], None, true)
        .unwrap();
    model.tokenizer().unwrap().encode_chat(&pieces).unwrap()
}

fn schema() -> Value {
    json!({"type": "object",
           "properties": {"color": {"enum": ["red", "green", "blue"]},
                          "count": {"type": "integer", "minimum": 0, "maximum": 999},
                          "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
           "required": ["color", "count", "tags"], "additionalProperties": false})
}

/// The schema checked by hand: exactly these keys, values of these kinds.
fn satisfies_schema(v: &Value) -> bool {
    let Some(o) = v.as_object() else { return false };
    o.len() == 3
        && ["red", "green", "blue"].contains(&o["color"].as_str().unwrap_or(""))
        && o["count"].as_u64().is_some_and(|n| n <= 999)
        && o["tags"]
            .as_array()
            .is_some_and(|t| t.len() <= 3 && t.iter().all(|x| x == "a" || x == "b"))
}

per_device!(
    constrained_and_free_rows_in_one_batch_equal_each_alone,
    mixed_structured
);

fn mixed_structured(device: DeviceKind) {
    let model = Arc::new(Model::load(&smollm2_path()).unwrap());
    let grammars = GrammarCompiler::new(&model).unwrap();
    let ads: Vec<Arc<LoraAdapter>> = (0..3)
        .map(|i| Arc::new(random_adapter(&format!("r{i}"), model.config(), 8, 7 + i)))
        .collect();
    let mix = |i: usize| match i % 4 {
        0 => vec![],
        k => vec![(ads[k - 1].clone(), 1.0)],
    };
    let prompts = [
        "Describe a box as JSON.",
        "Tell me about the sea.",
        "Is the sky blue?",
        "What is bread made of?",
    ];
    let choices = vec!["yes".to_string(), "no".to_string(), "maybe".to_string()];
    // 12 requests: i % 3 == 0 JSON schema, i % 3 == 1 free, i % 3 == 2 choice (i % 2: seeded).
    let work: Vec<_> = (0..12usize)
        .map(|i| {
            let grammar = match i % 3 {
                0 => Some(Grammar::JsonSchema(schema())),
                2 => Some(Grammar::Choice(choices.clone())),
                _ => None,
            };
            let params = SamplingParams {
                max_tokens: 60,
                temperature: if i % 2 == 1 { 0.9 } else { 0.0 },
                seed: Some(i as u64),
                constraint: grammar.map(|g| grammars.compile(&g, "test").unwrap()),
                ..Default::default()
            };
            let req = request(&chat_prompt(&model, prompts[i % 4]), mix(i), params);
            (SeqId(i as u64), i / 3, req, i % 3)
        })
        .collect();
    let mut arrivals = vec![vec![]; 4];
    for (id, at, req, _) in &work {
        arrivals[*at].push((*id, req.clone()));
    }
    let mut engine = LlmEngine::new(model.clone(), on(device)).unwrap();
    let (out, peak) = run_engine(&mut engine, arrivals);
    assert!(
        peak >= 6,
        "constrained and free rows should share steps (peak {peak})"
    );
    let tok = model.tokenizer().unwrap();
    for (id, _, req, kind) in work {
        let alone = run_alone_on(on(device), &model, req);
        assert_eq!(
            out[&id], alone,
            "{id:?} (kind {kind}) differs in the batch from alone"
        );
        let ids: Vec<u32> = alone
            .iter()
            .copied()
            .filter(|t| !model.eos_ids.contains(t))
            .collect();
        let text = tok.decode(&ids, true).unwrap();
        match kind {
            0 => {
                let v: Value =
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
                assert!(satisfies_schema(&v), "{text}");
            }
            2 => assert!(choices.contains(&text), "{text:?}"),
            _ => {}
        }
    }
    assert_eq!(engine.stats().kv_blocks_used, 0);
}

#[test]
fn unsupported_schema_features_are_refused_by_name() {
    let model = Arc::new(Model::load(&smollm2_path()).unwrap());
    let grammars = GrammarCompiler::new(&model).unwrap();
    let bad = json!({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}});
    let err = grammars
        .compile(&Grammar::JsonSchema(bad), "response_format")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("response_format") && err.contains("if"),
        "{err}"
    );
    assert!(grammars
        .compile(&Grammar::Regex("(a".into()), "guided_regex")
        .is_err());
}

#[test]
fn grammar_vocabulary_bytes_equal_the_tokenizer_text() {
    let model = Arc::new(Model::load(&smollm2_path()).unwrap());
    let grammars = GrammarCompiler::new(&model).unwrap();
    let tok = model.tokenizer().unwrap();
    for text in [
        "Hello, world!",
        "  a  2 spaces\n\ttabs {\"json\": [1, 2.5e3, null]}",
        "déjà vu — 東京 🚢 <|im_end|> ümlaut",
        "0123456789 1,000,000",
    ] {
        let ids = tok.encode_plain(text).unwrap();
        assert_eq!(
            String::from_utf8(grammars.token_bytes(&ids)).unwrap(),
            text,
            "{ids:?}"
        );
    }
}
