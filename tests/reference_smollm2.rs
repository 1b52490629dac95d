//! SmolLM2-135M-Instruct from the GGUF (Q4_1, dequantized) with two random PEFT adapters
//! (r=8 on q,v; r=16 on all seven projections): logits and 32 greedy tokens against
//! transformers+PEFT, and the GGUF-rebuilt tokenizer against the HF tokenizer's ids.

mod common;
use common::*;
use openlora::engine::{LlmEngine, SeqId};
use openlora::exec::DeviceKind;
use openlora::lora::AdapterRegistry;
use openlora::model::{ChatMessage, Model};
use std::sync::Arc;

per_device!(smollm2_matches_transformers_peft_and_hf_tokenizer, check);

fn check(device: DeviceKind) {
    let model = Arc::new(Model::load_with(&smollm2_path(), &f32_weights()).unwrap());
    let tok = model.tokenizer().unwrap();

    // Tokenizer: every case, including digits, runs of spaces, accents, emoji and special tokens.
    let t = load_json(&fixtures().join("tokenizer/smollm2_cases.json"));
    let cases = t["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tok.encode(text, true).unwrap(),
            want,
            "tokenizer differs on {text:?}"
        );
        assert_eq!(
            tok.decode(&want, false).unwrap(),
            text,
            "decode does not round-trip {text:?}"
        );
    }
    // Chat template: same rendering as the HF template.
    let rendered = model
        .template
        .as_ref()
        .unwrap()
        .render(
            &[ChatMessage::text("user", "What is the capital of France?")],
            true,
        )
        .unwrap();
    let dir = fixtures().join("smollm2");
    let r = load_json(&dir.join("reference.json"));
    let prompts = r["prompts"].as_array().unwrap();
    let chat = prompts
        .iter()
        .find(|p| {
            p["text"]
                .as_str()
                .unwrap()
                .contains("<|im_start|>assistant")
        })
        .expect("a chat prompt");
    assert_eq!(rendered, chat["text"].as_str().unwrap());

    let reg = AdapterRegistry::new(model.config().clone());
    for name in ["qv_r8", "all_r16"] {
        reg.register(name, &dir.join("adapters").join(name))
            .unwrap();
    }
    let vocab = r["vocab_size"].as_u64().unwrap() as usize;
    let bytes = std::fs::read(dir.join(r["logits_file"].as_str().unwrap())).unwrap();
    let all: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let cases = r["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    let mut engine = LlmEngine::new(model.clone(), on(device)).unwrap();
    let mut batch = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let adapter = c["adapter"].as_str().map(|n| reg.load(n).unwrap());
        let p = &prompts[c["prompt_index"].as_u64().unwrap() as usize];
        let ids: Vec<u32> = p["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode(p["text"].as_str().unwrap(), true).unwrap(), ids);
        let off = c["logits_offset"].as_u64().unwrap() as usize;
        let want = &all[off..off + vocab];
        let got = prompt_logits_on(device, &model, &ids, adapter.as_ref());
        let diff = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            diff < 1e-3,
            "adapter {:?} prompt {}: max |logit diff| = {diff}",
            c["adapter"],
            c["prompt_index"]
        );
        let mix = adapter.map(|a| vec![(a, 1.0)]).unwrap_or_default();
        batch.push((SeqId(i as u64), request(&ids, mix, greedy_params(32))));
    }
    // 32 greedy tokens of every case, all cases decoded together in one mixed-adapter batch.
    let (out, peak) = run_engine(&mut engine, vec![batch]);
    assert!(peak > 8, "cases should have been batched together");
    for (i, c) in cases.iter().enumerate() {
        let greedy: Vec<u32> = c["greedy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            out[&SeqId(i as u64)],
            greedy,
            "greedy tokens differ for adapter {:?} prompt {}",
            c["adapter"],
            c["prompt_index"]
        );
    }
}
