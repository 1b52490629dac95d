//! Continuous batching and preemption on the tiny reference model: rows of different adapters
//! (and a weighted adapter mix) in one batch, arrivals mid-decode, a KV pool too small for all —
//! every sequence's tokens must equal the same request run alone.

mod common;
use common::*;
use openlora::config::EngineConfig;
use openlora::engine::{GenerateRequest, LlmEngine, SamplingParams, SeqId};
use openlora::exec::{DeviceKind, KvDtype};
use openlora::lora::random_adapter;
use openlora::lora::{AdapterPager, AdapterRegistry, LoraAdapter, PagerConfig};
use openlora::metrics::Metrics;
use openlora::model::{LoadOptions, Model};
use openlora::ops::cpu::quant::WeightFormat;
use std::sync::Arc;

fn setup() -> (Arc<Model>, Vec<Vec<(Arc<LoraAdapter>, f32)>>) {
    setup_with(&LoadOptions::default())
}

fn setup_with(opts: &LoadOptions) -> (Arc<Model>, Vec<Vec<(Arc<LoraAdapter>, f32)>>) {
    let dir = fixtures().join("tiny");
    let model = Arc::new(Model::load_with(&dir.join("model"), opts).unwrap());
    let reg = AdapterRegistry::new(model.config().clone());
    let ad: Vec<Arc<LoraAdapter>> = ["a4", "a8", "a16"]
        .iter()
        .map(|n| {
            reg.register(n, &dir.join("adapters").join(n)).unwrap();
            reg.load(n).unwrap()
        })
        .collect();
    let r12 = Arc::new(random_adapter("r12", model.config(), 12, 99));
    let mixes = vec![
        vec![],
        vec![(ad[0].clone(), 1.0)],
        vec![(ad[1].clone(), 1.0)],
        vec![(ad[2].clone(), 1.0)],
        vec![(r12, 1.0)],
        vec![(ad[0].clone(), 0.5), (ad[2].clone(), 0.7)],
    ];
    (model, mixes)
}

/// 18 requests: prompt lengths 1..40, each mix, greedy and seeded sampling, arriving over time.
fn workload(mixes: &[Vec<(Arc<LoraAdapter>, f32)>]) -> Vec<(SeqId, usize, GenerateRequest)> {
    (0..18)
        .map(|i| {
            let len = 1 + (i * 7) % 40;
            let prompt: Vec<u32> = (0..len).map(|j| ((i * 31 + j * 17) % 256) as u32).collect();
            let params = if i % 3 == 2 {
                SamplingParams {
                    temperature: 0.9,
                    top_p: 0.9,
                    seed: Some(i as u64),
                    max_tokens: 20 + i,
                    ignore_eos: true,
                    ..Default::default()
                }
            } else {
                greedy_params(20 + i)
            };
            (
                SeqId(i as u64),
                i / 2,
                request(&prompt, mixes[i % mixes.len()].clone(), params),
            )
        })
        .collect()
}

fn check(engine_cfg: EngineConfig) -> usize {
    check_with(engine_cfg, &LoadOptions::default())
}

fn check_with(engine_cfg: EngineConfig, opts: &LoadOptions) -> usize {
    check_paged(engine_cfg, opts, PagerConfig::default()).0
}

/// Runs the workload in one engine whose pager has `pager_cfg`'s budgets; every sequence must
/// equal the same request alone on an engine with the same device and KV dtype. Returns the
/// preemptions and the pager's device-tier evictions (slots refilled).
fn check_paged(
    engine_cfg: EngineConfig,
    opts: &LoadOptions,
    pager_cfg: PagerConfig,
) -> (usize, u64) {
    let (model, mixes) = setup_with(opts);
    let work = workload(&mixes);
    let mut arrivals = vec![vec![]; 10];
    for (id, at, req) in &work {
        arrivals[*at].push((*id, req.clone()));
    }
    let metrics = Arc::new(Metrics::new());
    let pager = AdapterPager::new(model.config().clone(), pager_cfg, metrics).unwrap();
    let mut engine =
        LlmEngine::with_pager(model.clone(), engine_cfg.clone(), Arc::new(pager)).unwrap();
    let (out, peak) = run_engine(&mut engine, arrivals);
    assert!(peak >= 4, "requests should overlap in steps (peak {peak})");
    for (id, _, req) in work {
        let alone_cfg = EngineConfig {
            kv_dtype: engine_cfg.kv_dtype,
            device: engine_cfg.device,
            ..Default::default()
        };
        let alone = run_alone_on(alone_cfg, &model, req);
        assert_eq!(
            out[&id], alone,
            "sequence {id:?} differs in the batch from alone"
        );
    }
    assert_eq!(engine.stats().kv_blocks_used, 0, "all blocks returned");
    let evictions = engine.pager().stats().device_evictions;
    (engine.stats().preemptions as usize, evictions)
}

per_device!(
    mixed_adapter_batch_with_arrivals_equals_each_request_alone,
    mixed_batch
);

fn mixed_batch(device: DeviceKind) {
    let preempted = check(EngineConfig {
        max_batch_tokens: 64,
        device,
        ..Default::default()
    });
    assert_eq!(preempted, 0);
}

per_device!(
    two_adapter_slots_for_five_adapters_page_and_equal_each_request_alone,
    few_slots
);

/// `--max-loras 2` under a working set of 5 adapters: slots are refilled while the workload runs
/// (the device executor re-uploads a slot only for a new occupant, and refuses to while a step
/// reading it is pending — an error here would fail the run).
fn few_slots(device: DeviceKind) {
    let cfg = EngineConfig {
        max_batch_tokens: 64,
        max_adapters_per_step: 2,
        device,
        ..Default::default()
    };
    let pager = PagerConfig {
        device_slots: 2,
        ..Default::default()
    };
    let (preempted, evictions) = check_paged(cfg, &LoadOptions::default(), pager);
    assert_eq!(preempted, 0);
    assert!(evictions > 0, "slots should have been refilled");
}

#[test]
fn quantized_weights_and_16_bit_kv_batch_equals_each_request_alone() {
    // Q8_0 projections with Q8_0 activations (int8 dot products), an f16 and a bf16 KV cache.
    let q8 = LoadOptions {
        quantize: Some(WeightFormat::Q8_0),
        ..Default::default()
    };
    for kv_dtype in [KvDtype::F16, KvDtype::BF16] {
        let cfg = EngineConfig {
            max_batch_tokens: 64,
            kv_dtype,
            ..Default::default()
        };
        assert_eq!(check_with(cfg, &q8), 0);
    }
}

per_device!(
    small_kv_pool_preempts_and_still_completes_identically,
    small_pool
);

fn small_pool(device: DeviceKind) {
    // 20 blocks of 4 tokens = 80 slots, far below the workload's needs; one sequence always fits.
    let preempted = check(EngineConfig {
        block_size: 4,
        num_blocks: 20,
        max_batch_tokens: 64,
        device,
        ..Default::default()
    });
    assert!(preempted > 0, "the pool should have forced preemption");
}

#[test]
fn cancelled_sequences_free_their_blocks_at_once() {
    let (model, mixes) = setup();
    let mut engine = LlmEngine::new(model, EngineConfig::default()).unwrap();
    for (id, _, req) in workload(&mixes) {
        engine.add_request(id, req).unwrap();
    }
    engine.step();
    engine.step();
    assert!(engine.stats().kv_blocks_used > 0);
    for i in 0..18 {
        engine.abort(SeqId(i));
    }
    assert_eq!(engine.stats().kv_blocks_used, 0);
    assert!(!engine.has_work());
}

#[test]
fn limits_reject_what_cannot_fit_and_cut_at_the_pool_end() {
    // Reject what can never fit; accept and cut at max_tokens.
    let (model, _) = setup();
    let mut engine = LlmEngine::new(
        model,
        EngineConfig {
            num_blocks: 4,
            block_size: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let long = request(&[1; 16], vec![], greedy_params(4));
    assert!(
        engine.add_request(SeqId(1), long).is_err(),
        "prompt filling the whole pool must be rejected"
    );
    let bad = request(&[300], vec![], greedy_params(4));
    assert!(
        engine.add_request(SeqId(2), bad).is_err(),
        "out-of-vocab token must be rejected"
    );
    let ok = request(&[1, 2, 3], vec![], greedy_params(100));
    engine.add_request(SeqId(3), ok).unwrap();
    let (out, _) = run_engine(&mut engine, vec![]);
    assert_eq!(
        out[&SeqId(3)].len(),
        16 - 3,
        "completion is cut at the pool/context end"
    );
}
