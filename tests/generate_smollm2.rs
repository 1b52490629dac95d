//! End to end on SmolLM2: `openlora generate --chat` answers with Paris; stop strings that span
//! tokens are cut and never emitted; EOS ends generation; seeded sampling is reproducible.

mod common;
use common::*;
use openlora::config::EngineConfig;
use openlora::engine::{EngineHandle, FinishReason, LlmEngine, SamplingParams};
use openlora::model::{ChatMessage, Model};
use std::sync::Arc;

/// On the exact f32 path (the reference one; transformers says "The capital of France is Paris.").
/// The first token of this answer is a near-tie in the reference itself ("The" 25.33 vs "L" 25.24),
/// which 8-bit activation rounding can flip: the quantized path is checked against the reference
/// by agreement rates in quantized_smollm2.rs, not on one prompt.
#[test]
fn cli_generate_answers_paris() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_openlora"))
        .args([
            "generate",
            "--dtype",
            "f32",
            "--chat",
            "--max-tokens",
            "24",
            "--prompt",
            "What is the capital of France?",
            "--model",
        ])
        .arg(smollm2_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Paris"), "answer was {text:?}");
}

fn collect(
    handle: &EngineHandle,
    prompt: &[u32],
    params: SamplingParams,
) -> (String, Vec<u32>, FinishReason) {
    let mut s = handle
        .submit_blocking(request(prompt, vec![], params))
        .unwrap();
    let (mut text, mut toks) = (String::new(), vec![]);
    while let Some(ev) = s.blocking_next() {
        text.push_str(&ev.text);
        toks.extend(ev.token);
        if let Some(f) = ev.finish {
            return (text, toks, f);
        }
    }
    panic!("stream ended without finish");
}

#[test]
fn stop_strings_eos_and_seeds() {
    // The exact path, whose answer is known to be "The capital of France is Paris." (see above).
    let model = Arc::new(Model::load_with(&smollm2_path(), &f32_weights()).unwrap());
    let tmpl = model.template.as_ref().unwrap();
    let chat = tmpl
        .render(
            &[ChatMessage::text("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    let ids = model.tokenizer().unwrap().encode(&chat, false).unwrap();
    let handle =
        EngineHandle::spawn(LlmEngine::new(model.clone(), EngineConfig::default()).unwrap());

    let (full, toks, fin) = collect(
        &handle,
        &ids,
        SamplingParams {
            max_tokens: 40,
            ..Default::default()
        },
    );
    assert_eq!(
        fin,
        FinishReason::Stop,
        "EOS should end the answer: {full:?}"
    );
    assert!(model.eos_ids.contains(toks.last().unwrap()));
    assert!(
        full.contains("Paris") && !full.contains("<|im_end|>"),
        "{full:?}"
    );

    // "is Par" spans the tokens " is" and " Paris": cut before it, nothing of it emitted.
    let (text, _, fin) = collect(
        &handle,
        &ids,
        SamplingParams {
            max_tokens: 40,
            stop: vec!["is Par".into()],
            ..Default::default()
        },
    );
    assert_eq!(fin, FinishReason::Stop);
    assert_eq!(text, full[..full.find("is Par").unwrap()]);

    let (text, toks, fin) = collect(
        &handle,
        &ids,
        SamplingParams {
            max_tokens: 3,
            ..Default::default()
        },
    );
    assert_eq!((fin, toks.len()), (FinishReason::Length, 3));
    assert!(full.starts_with(&text));

    let p = SamplingParams {
        max_tokens: 24,
        temperature: 1.0,
        seed: Some(42),
        ignore_eos: true,
        ..Default::default()
    };
    let a = collect(&handle, &ids, p.clone()).1;
    let b = collect(&handle, &ids, p.clone()).1;
    let c = collect(
        &handle,
        &ids,
        SamplingParams {
            seed: Some(43),
            ..p
        },
    )
    .1;
    assert_eq!(a, b, "same seed, same tokens");
    assert_ne!(
        a, c,
        "another seed should differ somewhere in 24 sampled tokens"
    );
}
