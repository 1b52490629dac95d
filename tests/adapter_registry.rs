//! Registration is lazy and strict: 10,000 adapters register from config + header alone; corrupt
//! or missing files, wrong shapes and unknown target modules fail at registration with a message
//! naming the problem; a file broken after registration fails its request with a clear error
//! while the engine keeps serving everyone else.

mod common;
use common::*;
use openlora::config::EngineConfig;
use openlora::engine::{EngineHandle, GenerateRequest, LlmEngine};
use openlora::lora::write_random_adapter;
use openlora::lora::{AdapterPager, AdapterRegistry, PagerConfig, Proj, Tier};
use openlora::metrics::Metrics;
use openlora::model::Model;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

fn tiny() -> Arc<Model> {
    Arc::new(Model::load(&fixtures().join("tiny/model")).unwrap())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

#[test]
fn registers_10000_adapters_lazily() {
    let model = tiny();
    let scratch = Scratch::new("reg10k");
    let n = 10_000;
    for i in 0..n {
        write_random_adapter(
            &scratch.0.join(format!("a{i}")),
            model.config(),
            1 + i % 4,
            &[Proj::Q, Proj::V],
            i as u64,
        )
        .unwrap();
    }
    let registry = AdapterRegistry::new(model.config().clone());
    let pager = AdapterPager::new(
        model.config().clone(),
        PagerConfig::default(),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let start = Instant::now();
    for i in 0..n {
        registry
            .register(&format!("a{i}"), &scratch.0.join(format!("a{i}")))
            .unwrap();
    }
    let took = start.elapsed();
    eprintln!(
        "registered {n} adapters in {took:?} ({:?} each)",
        took / n as u32
    );
    assert_eq!(registry.len(), n);
    let specs = registry.list();
    assert!(specs.iter().all(|s| pager.tier(s.id) == Tier::Disk));
    assert_eq!(specs[0].ranks.len(), model.config().layers);
    assert_eq!(
        pager.stats().disk_reads,
        0,
        "registration must not read weights"
    );
}

/// Registering each broken folder fails with a message containing `expect`.
#[test]
fn bad_adapters_fail_at_registration_with_a_clear_error() {
    let model = tiny();
    let scratch = Scratch::new("reg-bad");
    let good = fixtures().join("tiny/adapters/a8");
    let registry = AdapterRegistry::new(model.config().clone());
    let mk = |name: &str| {
        let d = scratch.0.join(name);
        copy_dir(&good, &d);
        d
    };
    let mut cases: Vec<(&str, PathBuf, &str)> = Vec::new();
    cases.push(("missing_dir", scratch.0.join("nope"), "not found"));
    let d = mk("no_weights");
    std::fs::remove_file(d.join("adapter_model.safetensors")).unwrap();
    cases.push(("no_weights", d, "adapter_model.safetensors"));
    let d = mk("no_config");
    std::fs::remove_file(d.join("adapter_config.json")).unwrap();
    cases.push(("no_config", d, "adapter_config.json"));
    let d = mk("garbage");
    std::fs::write(d.join("adapter_model.safetensors"), [0u8; 100]).unwrap();
    cases.push(("garbage", d, "safetensors"));
    let d = mk("truncated");
    let bytes = std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    std::fs::write(
        d.join("adapter_model.safetensors"),
        &bytes[..bytes.len() - 64],
    )
    .unwrap();
    cases.push(("truncated", d, "safetensors"));
    let d = mk("bad_json");
    std::fs::write(d.join("adapter_config.json"), "{ not json").unwrap();
    cases.push(("bad_json", d, "adapter_config.json"));
    let d = mk("unknown_module");
    let cfg = std::fs::read_to_string(d.join("adapter_config.json")).unwrap();
    std::fs::write(
        d.join("adapter_config.json"),
        cfg.replace("\"q_proj\"", "\"foo_proj\""),
    )
    .unwrap();
    cases.push(("unknown_module", d, "unknown target module `foo_proj`"));
    // Wrong shapes: a rank-4 adapter written for a model with a different hidden size.
    let mut other = model.config().clone();
    other.hidden *= 2;
    let d = scratch.0.join("wrong_shape");
    write_random_adapter(&d, &other, 4, &[Proj::Q], 1).unwrap();
    cases.push(("wrong_shape", d, "expected [r, 64]"));
    let d = scratch.0.join("too_many_layers");
    let mut deeper = model.config().clone();
    deeper.layers += 1;
    write_random_adapter(&d, &deeper, 4, &[Proj::V], 1).unwrap();
    cases.push(("too_many_layers", d, "the base model has 2 layers"));

    for (name, dir, expect) in cases {
        let err = registry.register(name, &dir).expect_err(name).to_string();
        assert!(
            err.contains(expect),
            "{name}: `{err}` should mention `{expect}`"
        );
        assert!(registry.get_id(name).is_none());
    }
    // Nothing half-registered; a good adapter still registers.
    assert_eq!(registry.len(), 0);
    registry.register("good", &good).unwrap();
    assert!(registry.register("good", &good).is_err(), "duplicate name");
}

#[test]
fn broken_file_after_registration_fails_only_its_request() {
    let model = tiny();
    let scratch = Scratch::new("reg-broken");
    let registry = AdapterRegistry::new(model.config().clone());
    for name in ["ok", "broken"] {
        let d = scratch.0.join(name);
        copy_dir(&fixtures().join("tiny/adapters/a4"), &d);
        registry.register(name, &d).unwrap();
    }
    std::fs::write(
        scratch.0.join("broken/adapter_model.safetensors"),
        b"overwritten",
    )
    .unwrap();
    let engine = LlmEngine::new(model.clone(), EngineConfig::default()).unwrap();
    let handle = EngineHandle::spawn(engine);
    let req = |name: &str| GenerateRequest {
        prompt_ids: vec![1, 2, 3],
        adapters: vec![(registry.resolve(name).unwrap(), 1.0)],
        params: greedy_params(5),
    };
    let err = handle
        .submit_blocking(req("broken"))
        .err()
        .expect("a broken adapter fails its request")
        .to_string();
    assert!(
        err.contains("`broken` could not be paged in") && err.contains("safetensors"),
        "{err}"
    );
    // The engine keeps serving: the healthy adapter's request runs to the end, and equals the
    // same request with the adapter loaded directly.
    let mut stream = handle.submit_blocking(req("ok")).unwrap();
    let mut tokens = Vec::new();
    while let Some(ev) = stream.blocking_next() {
        tokens.extend(ev.token);
        if ev.finish.is_some() {
            break;
        }
    }
    let direct = registry.load("ok").unwrap();
    let alone = run_alone(
        &model,
        request(&[1, 2, 3], vec![(direct, 1.0)], greedy_params(5)),
    );
    assert_eq!(tokens, alone);
    // The failure is remembered: a later request fails at once.
    assert!(handle.submit_blocking(req("broken")).is_err());
}
