//! The prefix cache and n > 1 on the real SmolLM2 model with the real demo adapters (adapters/).
//! The reference for every cache-on run is the same workload on an engine with the cache off:
//! tokens and logprobs must be bit-identical per request. Isolation is also checked directly:
//! a prompt an identity has not computed before gets no hit, whoever computed it under other
//! weights. n > 1: choice `j` must equal a single request with the seed `choice_seed(s, j)`.

mod common;
use common::*;
use openlora::config::EngineConfig;
use openlora::engine::{choice_seed, GenerateRequest, LlmEngine, SamplingParams, SeqId};
use openlora::exec::DeviceKind;
use openlora::lora::{AdapterRef, AdapterRegistry};
use openlora::model::Model;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Per (request, choice): tokens and logprob bits.
type Outputs = HashMap<(SeqId, usize), (Vec<u32>, Vec<u32>)>;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn model() -> Arc<Model> {
    Arc::new(Model::load(&smollm2_path()).unwrap())
}

fn registry(model: &Model) -> AdapterRegistry {
    let reg = AdapterRegistry::new(model.config().clone());
    for name in ["french", "pirate", "shouty"] {
        reg.register(name, &repo().join("adapters").join(name))
            .unwrap();
    }
    reg
}

fn engine(model: &Arc<Model>, cache: bool, num_blocks: usize) -> LlmEngine {
    engine_on(DeviceKind::Cpu, model, cache, num_blocks)
}

fn engine_on(device: DeviceKind, model: &Arc<Model>, cache: bool, num_blocks: usize) -> LlmEngine {
    let cfg = EngineConfig {
        enable_prefix_caching: cache,
        num_blocks,
        device,
        ..Default::default()
    };
    LlmEngine::new(model.clone(), cfg).unwrap()
}

/// A long shared system prompt (~250 tokens) and a short user turn.
fn chat_prompt(model: &Model, user: &str) -> Vec<u32> {
    let system = "You are a careful assistant for a shipping company. ".repeat(4)
        + &"Answer questions about parcels, delivery windows, customs forms, lost items, \
            refunds and the loyalty programme. Keep answers short and polite. "
            .repeat(6);
    let text = format!(
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    );
    model.tokenizer().unwrap().encode(&text, false).unwrap()
}

fn params(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens,
        ignore_eos: true,
        logprobs: Some(3),
        ..Default::default()
    }
}

fn req(prompt: Vec<u32>, adapter: Option<AdapterRef>, params: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        prompt_ids: prompt,
        adapters: adapter.into_iter().map(|a| (a, 1.0)).collect(),
        params,
    }
}

/// Runs every arrival wave to completion in turn (`waves[i]` are added together); returns the
/// outputs and, per wave, the prefix-cache hits it got (tokens).
fn run_waves(
    engine: &mut LlmEngine,
    waves: Vec<Vec<(SeqId, GenerateRequest)>>,
) -> (Outputs, Vec<u64>) {
    let mut out = Outputs::new();
    let mut hits = Vec::new();
    for wave in waves {
        let before = engine.stats().prefix_cache_hits;
        for (id, r) in wave {
            engine.add_request(id, r).unwrap();
        }
        let mut steps = 0;
        while engine.has_work() {
            for (id, ev) in engine.step() {
                let e = out.entry((id, ev.index)).or_default();
                e.0.extend(ev.token);
                e.1.extend(ev.logprob.map(|l| l.logprob.to_bits()));
            }
            steps += 1;
            assert!(steps < 100_000, "engine did not finish");
        }
        hits.push(engine.stats().prefix_cache_hits - before);
    }
    (out, hits)
}

per_device!(
    the_cache_never_crosses_adapters_and_changes_no_token_or_logprob,
    cache_isolation
);

fn cache_isolation(device: DeviceKind) {
    let model = model();
    let reg = registry(&model);
    let identities: Vec<Option<AdapterRef>> = std::iter::once(None)
        .chain(["pirate", "french", "shouty"].map(|n| Some(reg.resolve(n).unwrap())))
        .collect();
    let users = ["Where is my parcel?", "How do I get a refund?"];
    // Interleaved: base, pirate, french, shouty, then again with another user turn; one request
    // at a time (each finds what the ones before cached), then all eight at once.
    let mut waves = Vec::new();
    for (u, user) in users.iter().enumerate() {
        for (a, ad) in identities.iter().enumerate() {
            let id = SeqId((u * 4 + a) as u64);
            waves.push(vec![(
                id,
                req(chat_prompt(&model, user), ad.clone(), params(8)),
            )]);
        }
    }
    let together: Vec<_> = waves
        .iter()
        .flatten()
        .map(|(id, r)| (SeqId(id.0 + 100), r.clone()))
        .collect();
    waves.push(together);
    let (on, hits_on) = run_waves(&mut engine_on(device, &model, true, 1024), waves.clone());
    let (off, hits_off) = run_waves(&mut engine_on(device, &model, false, 1024), waves);
    assert_eq!(on.len(), 16);
    for (k, v) in &off {
        assert_eq!(
            on.get(k),
            Some(v),
            "request {k:?} differs with the cache on"
        );
    }
    let cached = |user: &str| ((chat_prompt(&model, user).len() - 1) / 16 * 16) as u64;
    // The first request of each identity computed everything: the others' blocks never matched.
    assert_eq!(
        &hits_on[..4],
        &[0, 0, 0, 0],
        "a prefix was reused across adapters"
    );
    // The second user turn shares the system prompt with the first of the same identity.
    for (i, &h) in hits_on[4..8].iter().enumerate() {
        assert!(
            h >= 160 && h <= cached(users[1]),
            "identity {i}: {h} cached tokens"
        );
    }
    // All eight again: every prompt's blocks but the last are cached, under its own identity.
    assert_eq!(hits_on[8], 4 * (cached(users[0]) + cached(users[1])));
    assert!(hits_off.iter().all(|&h| h == 0));
}

#[test]
fn an_adapter_reloaded_with_other_weights_gets_no_stale_block() {
    let model = model();
    let reg = registry(&model);
    let prompt = chat_prompt(&model, "Tell me about customs forms.");
    reg.register("x", &repo().join("adapters/pirate")).unwrap();
    let mut eng = engine(&model, true, 1024);
    let first = req(prompt.clone(), Some(reg.resolve("x").unwrap()), params(12));
    let (_, hits) = run_waves(&mut eng, vec![vec![(SeqId(1), first.clone())]; 2]);
    assert_eq!(hits[0], 0);
    assert!(hits[1] > 0, "the same adapter reuses its own blocks");
    // `load_inplace`: same name, other weights (a new registration id).
    let (_, old) = reg.replace("x", &repo().join("adapters/french")).unwrap();
    eng.pager().forget(old.unwrap());
    let reloaded = req(prompt.clone(), Some(reg.resolve("x").unwrap()), params(12));
    let (after, hits) = run_waves(&mut eng, vec![vec![(SeqId(2), reloaded.clone())]]);
    assert_eq!(hits, vec![0], "blocks of the old weights were reused");
    // A fresh engine (a fresh server) with the new weights is the reference.
    let (fresh, _) = run_waves(
        &mut engine(&model, true, 1024),
        vec![vec![(SeqId(2), reloaded)]],
    );
    assert_eq!(after, fresh);
    let (old_out, _) = run_waves(
        &mut engine(&model, false, 1024),
        vec![vec![(SeqId(2), first)]],
    );
    assert_ne!(
        old_out[&(SeqId(2), 0)].0,
        after[&(SeqId(2), 0)].0,
        "the weights differ"
    );
}

#[test]
fn a_full_pool_evicts_idle_cached_blocks_and_outputs_match_cache_off() {
    let model = model();
    let reg = registry(&model);
    let pirate = reg.resolve("pirate").unwrap();
    // 48 blocks of 16 tokens: the four ~220-token prompts of a wave (14 blocks each) do not fit
    // at once, so later waves evict idle cached blocks while others are shared by running
    // sequences.
    let users = ["Q1", "Q2", "Q3", "Q4", "Q5", "Q6"];
    let mut waves = Vec::new();
    for (w, pair) in users.chunks(2).enumerate() {
        let mut wave = Vec::new();
        for (i, user) in pair.iter().enumerate() {
            for (j, ad) in [None, Some(pirate.clone())].into_iter().enumerate() {
                let seed = SamplingParams {
                    temperature: 0.8,
                    seed: Some(7 + i as u64),
                    ..params(6)
                };
                let p = if j == 0 { params(6) } else { seed };
                let mut prompt = chat_prompt(&model, user);
                if w == 2 {
                    prompt.splice(5..9, [42, 43, 44, 45]); // a prompt nothing cached shares
                }
                wave.push((SeqId((w * 10 + i * 2 + j) as u64), req(prompt, ad, p)));
            }
        }
        waves.push(wave);
    }
    let mut on = engine(&model, true, 48);
    let (out_on, hits) = run_waves(&mut on, waves.clone());
    let (out_off, _) = run_waves(&mut engine(&model, false, 48), waves);
    assert_eq!(out_on, out_off);
    let s = on.stats();
    assert!(
        hits[1] > 0,
        "wave 2 reuses wave 1's prompt blocks: {hits:?}"
    );
    assert!(s.prefix_cache_evictions > 0, "no cached block was evicted");
}

per_device!(
    n_choices_share_the_prompt_blocks_and_each_has_its_own_seed_stream,
    n_choices
);

fn n_choices(device: DeviceKind) {
    let engine = |model: &Arc<Model>, cache, blocks| engine_on(device, model, cache, blocks);
    let model = model();
    let reg = registry(&model);
    let prompt = chat_prompt(&model, "Name three colours."); // not a multiple of 16: COW
    assert_ne!(prompt.len() % 16, 0);
    let shouty = Some(reg.resolve("shouty").unwrap());
    let greedy = SamplingParams { n: 4, ..params(10) };
    let sampled = SamplingParams {
        n: 3,
        temperature: 1.0,
        seed: Some(11),
        ..params(10)
    };
    let mut eng = engine(&model, false, 1024);
    eng.add_request(SeqId(1), req(prompt.clone(), shouty.clone(), greedy))
        .unwrap();
    // The step that computes the prompt forks: the 4 choices hold the prompt's blocks once.
    let mut out = Outputs::new();
    let mut first = true;
    while eng.has_work() {
        for (id, ev) in eng.step() {
            let e = out.entry((id, ev.index)).or_default();
            e.0.extend(ev.token);
            e.1.extend(ev.logprob.map(|l| l.logprob.to_bits()));
        }
        if first && !out.is_empty() {
            first = false;
            assert_eq!(out.len(), 4);
            assert_eq!(eng.stats().kv_blocks_used, prompt.len().div_ceil(16));
        }
    }
    let (single, _) = run_waves(
        &mut engine(&model, false, 1024),
        vec![vec![(
            SeqId(1),
            req(prompt.clone(), shouty.clone(), params(10)),
        )]],
    );
    for j in 0..4 {
        assert_eq!(
            out[&(SeqId(1), j)],
            single[&(SeqId(1), 0)],
            "greedy choice {j}"
        );
    }
    // Seeded: choice j is the single request with seed choice_seed(11, j), with the cache on
    // and off; the choices differ from each other.
    for cache in [true, false] {
        let (many, _) = run_waves(
            &mut engine(&model, cache, 1024),
            vec![vec![(
                SeqId(5),
                req(prompt.clone(), shouty.clone(), sampled.clone()),
            )]],
        );
        for j in 0..3 {
            let one = SamplingParams {
                n: 1,
                seed: Some(choice_seed(11, j)),
                ..sampled.clone()
            };
            let (alone, _) = run_waves(
                &mut engine(&model, cache, 1024),
                vec![vec![(SeqId(5), req(prompt.clone(), shouty.clone(), one))]],
            );
            assert_eq!(
                many[&(SeqId(5), j)],
                alone[&(SeqId(5), 0)],
                "choice {j}, cache {cache}"
            );
        }
        assert_ne!(many[&(SeqId(5), 0)].0, many[&(SeqId(5), 1)].0);
        assert_ne!(many[&(SeqId(5), 1)].0, many[&(SeqId(5), 2)].0);
    }
}
