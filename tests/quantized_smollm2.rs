//! The quantized CPU path on SmolLM2 against the f32 reference path (whose greedy tokens equal
//! transformers+PEFT, see reference_smollm2.rs), on the 18 reference cases (6 prompts x {base,
//! qv_r8, all_r16}, 32 steps each): the teacher-forced top-1 agreement with the reference's next
//! token and the number of cases whose 32 greedy tokens equal the reference exactly. The default
//! path (the GGUF's own Q4_1 + Q8_0 embedding, f16 KV, `--activations auto` = two-plane int16
//! activations) must agree at >= 99.5% with >= 15 of 18 exact; ggml's int8 activations
//! (`--activations int8`, the fast mode) at >= 97%; `--quantize q8_0` (two weight roundings) at
//! >= 95%. Every case decoded in one mixed-adapter batch gives exactly the tokens it gives alone.

mod common;
use common::*;
use openlora::lora::{AdapterRegistry, LoraAdapter};
use openlora::model::{ActivationMode, LoadOptions, Model};
use openlora::ops::cpu::quant::ActPrecision;
use openlora::ops::cpu::quant::WeightFormat;
use serde_json::Value;
use std::sync::Arc;

struct Case {
    prompt: Vec<u32>,
    adapter: Option<Arc<LoraAdapter>>,
    greedy: Vec<u32>,
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn cases(model: &Model) -> Vec<Case> {
    let dir = fixtures().join("smollm2");
    let r = load_json(&dir.join("reference.json"));
    let reg = AdapterRegistry::new(model.config().clone());
    for name in ["qv_r8", "all_r16"] {
        reg.register(name, &dir.join("adapters").join(name))
            .unwrap();
    }
    let prompts = r["prompts"].as_array().unwrap();
    r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            prompt: ids(&prompts[c["prompt_index"].as_u64().unwrap() as usize]["ids"]),
            adapter: c["adapter"].as_str().map(|n| reg.load(n).unwrap()),
            greedy: ids(&c["greedy"]),
        })
        .collect()
}

/// Argmax at every step of `prompt + greedy[..n-1]` in one prefill: the model's next-token choice
/// with the reference's tokens forced in.
fn teacher_forced(model: &Arc<Model>, c: &Case) -> Vec<u32> {
    let mut tokens = c.prompt.clone();
    tokens.extend_from_slice(&c.greedy[..c.greedy.len() - 1]);
    let logits = prefill_logits(model, &tokens, c.adapter.as_ref(), c.prompt.len() - 1);
    let vocab = model.config().vocab_size;
    logits
        .chunks(vocab)
        .map(|row| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}

fn check(opts: LoadOptions, label: &str, min_agreement: f64, min_exact: usize) {
    let model = Arc::new(Model::load_with(&smollm2_path(), &opts).unwrap());
    let cases = cases(&model);
    assert_eq!(cases.len(), 18);
    let (mut agree, mut steps, mut exact) = (0, 0, 0);
    let mut batch = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let tf = teacher_forced(&model, c);
        agree += tf.iter().zip(&c.greedy).filter(|(a, b)| a == b).count();
        steps += c.greedy.len();
        let mix = c.adapter.iter().map(|a| (a.clone(), 1.0)).collect();
        batch.push((
            openlora::engine::SeqId(i as u64),
            request(&c.prompt, mix, greedy_params(32)),
        ));
    }
    // Every case in one mixed-adapter batch vs alone: bit-identical tokens.
    let mut engine = openlora::engine::LlmEngine::new(model.clone(), Default::default()).unwrap();
    let (out, peak) = run_engine(&mut engine, vec![batch.clone()]);
    assert!(peak > 8, "cases should have been batched together");
    for (id, req) in batch {
        let alone = run_alone(&model, req);
        assert_eq!(
            out[&id], alone,
            "{label}: case {id:?} differs batched vs alone"
        );
        exact += (alone == cases[id.0 as usize].greedy) as usize;
    }
    let rate = agree as f64 / steps as f64;
    eprintln!(
        "{label}: teacher-forced top-1 agreement {agree}/{steps} = {:.2}%; exact 32-token greedy matches {exact}/18",
        100.0 * rate
    );
    assert!(
        rate >= min_agreement,
        "{label}: top-1 agreement {rate:.4} < {min_agreement}"
    );
    assert!(
        exact >= min_exact,
        "{label}: {exact}/18 exact greedy matches < {min_exact}"
    );
}

#[test]
fn gguf_formats_agree_with_the_f32_reference() {
    // Issue 22's bar for the default path (int8 activations gave 98.26% and 9/18).
    check(
        LoadOptions::default(),
        "Q4_1 (as stored), int16 activations, f16 KV",
        0.995,
        15,
    );
}

#[test]
fn int8_activations_agree_with_the_f32_reference() {
    let opts = LoadOptions {
        activations: ActivationMode::Fixed(ActPrecision::Int8),
        ..Default::default()
    };
    check(opts, "Q4_1 (as stored), int8 activations, f16 KV", 0.97, 0);
}

#[test]
fn isq_q8_0_agrees_with_the_f32_reference() {
    let opts = LoadOptions {
        quantize: Some(WeightFormat::Q8_0),
        activations: ActivationMode::Fixed(ActPrecision::Int8),
        ..Default::default()
    };
    // Re-quantized from the dequantized Q4_1 (two roundings): measured 96.5% on 2026-12-02; the
    // 97% bar is the default path's.
    check(opts, "--quantize q8_0, int8 activations, f16 KV", 0.95, 0);
}
