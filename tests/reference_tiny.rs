//! The tiny random Llama (GQA, tied embeddings) with three PEFT adapters of ranks 4/8(rsLoRA)/16
//! on different target sets: last-position logits and 32 greedy tokens must match
//! transformers+PEFT (tests/fixtures/make_reference.py) for base and every adapter.

mod common;
use common::*;
use openlora::exec::DeviceKind;
use openlora::lora::AdapterRegistry;
use openlora::model::Model;
use std::sync::Arc;

per_device!(tiny_llama_matches_transformers_peft, check);

fn check(device: DeviceKind) {
    let dir = fixtures().join("tiny");
    let model = Arc::new(Model::load_with(&dir.join("model"), &f32_weights()).unwrap());
    assert_eq!(
        model.config().kv_heads * 2,
        model.config().heads,
        "fixture must exercise GQA"
    );
    assert!(model.config().tie_embeddings);
    let reg = AdapterRegistry::new(model.config().clone());
    for name in ["a4", "a8", "a16"] {
        reg.register(name, &dir.join("adapters").join(name))
            .unwrap();
    }
    let r = load_json(&dir.join("reference.json"));
    let prompts: Vec<Vec<u32>> = r["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    let cases = r["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for c in cases {
        let adapter = c["adapter"].as_str().map(|n| reg.load(n).unwrap());
        let prompt = &prompts[c["prompt_index"].as_u64().unwrap() as usize];
        let want: Vec<f32> = c["last_logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let got = prompt_logits_on(device, &model, prompt, adapter.as_ref());
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-3, "case {c:?}: max |logit diff| = {diff}");
        let greedy: Vec<u32> = c["greedy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let mix = adapter.map(|a| vec![(a, 1.0)]).unwrap_or_default();
        let req = request(prompt, mix, greedy_params(greedy.len()));
        let got = run_alone_on(on(device), &model, req);
        assert_eq!(
            got, greedy,
            "greedy tokens differ for adapter {:?} prompt {}",
            c["adapter"], c["prompt_index"]
        );
    }
}
