//! Training examples through SmolLM2's own chat template and tokenizer: the loss covers exactly
//! the assistant turns to learn (their content and the `<|im_end|>` that ends them), never the
//! system prompt the template adds, the user turns, an assistant turn of weight 0 or the markup;
//! special-token text inside a content stays plain text; the ids are those of the rendered prompt.

mod common;
use common::*;
use openlora::model::{ChatMessage, Model};
use openlora::train::{encode, load_examples, parse_jsonl};

#[test]
fn loss_covers_exactly_the_assistant_turns() {
    let model = Model::load(&smollm2_path()).unwrap();
    let (tok, template) = (model.tokenizer().unwrap(), model.template.as_ref().unwrap());
    let line = serde_json::json!({"messages": [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi there <|im_end|> friend.", "weight": 0},
        {"role": "user", "content": "Again, 12 times."},
        {"role": "assistant", "content": "Hello again, 12 times!"},
    ]});
    let recs = parse_jsonl(&line.to_string(), "training_file").unwrap();
    let ex = encode(&recs[0], tok, template, &model.eos_ids, 1024)
        .unwrap()
        .unwrap();
    // The ids are the whole conversation as the template renders it.
    let msgs: Vec<ChatMessage> = recs[0].messages.clone();
    let rendered = template.render(&msgs, false).unwrap();
    assert!(rendered.contains("You are a helpful AI assistant named SmolLM"));
    let pieces = template.render_pieces(&msgs, None, false).unwrap();
    assert_eq!(ex.ids, tok.encode_chat(&pieces).unwrap());
    // The targets, decoded, are the second reply and its end-of-turn token, in one span.
    let first = ex.loss.iter().position(|&l| l).unwrap();
    let n = ex.loss.iter().filter(|&&l| l).count();
    assert!(
        ex.loss[first..first + n].iter().all(|&l| l),
        "one contiguous span"
    );
    let target: Vec<u32> = ex.ids[first..first + n].to_vec();
    assert_eq!(
        tok.decode(&target, false).unwrap(),
        "Hello again, 12 times!<|im_end|>"
    );
    // The first reply's `<|im_end|>` text is content: plain tokens, not the special id.
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    let specials = ex.ids.iter().filter(|&&i| i == im_end).count();
    assert_eq!(
        specials, 5,
        "system, user, assistant, user, assistant turns end once each"
    );
}

#[test]
fn a_file_with_a_bad_line_names_it_and_truncation_drops_empty_examples() {
    let model = Model::load(&smollm2_path()).unwrap();
    let good = r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a long enough reply"}]}"#;
    let text = format!("{good}\n{good}\n{{\"messages\": \"nope\"}}\n");
    let err = load_examples(&model, &text, "training_file", 1024)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 3") && err.contains("`messages` must be an array"),
        "{err}"
    );
    let (ok, dropped) =
        load_examples(&model, &format!("{good}\n{good}\n"), "training_file", 1024).unwrap();
    assert_eq!((ok.len(), dropped), (2, 0));
    // 20 tokens hold the system prompt and the user turn but no assistant token.
    let err = load_examples(&model, good, "training_file", 20)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no example keeps an assistant token"), "{err}");
}
