//! Adapters by Hugging Face hub id, offline: a hub cache laid out as the hub writes it
//! (`models--org--name/{refs/<rev>, snapshots/<commit>/...}`) is built here, and with
//! `HF_HUB_OFFLINE=1` and `HF_HUB_CACHE` pointing at it, ids resolve and register without any
//! network; a missing id is a clear error naming the cache.

mod common;
use common::*;
use openlora::lora::{hub, AdapterRegistry};
use openlora::model::Model;
use std::path::Path;
use std::sync::Arc;

fn put_snapshot(cache: &Path, repo: &str, rev: &str, commit: &str, from: &Path) {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snap = root.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs").join(rev), commit).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(from.join(f), snap.join(f)).unwrap();
    }
}

#[test]
fn hub_ids_resolve_from_a_populated_cache_offline() {
    let cache = std::env::temp_dir().join(format!("openlora-hub-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let tiny = fixtures().join("tiny");
    put_snapshot(
        &cache,
        "acme/tiny-a4",
        "main",
        "1111111111111111111111111111111111111111",
        &tiny.join("adapters/a4"),
    );
    put_snapshot(
        &cache,
        "acme/tiny-a4",
        "v2",
        "2222222222222222222222222222222222222222",
        &tiny.join("adapters/a16"),
    );
    // The only test in this binary: no other thread reads the environment.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    std::env::set_var("HF_HUB_CACHE", &cache);

    let model = Arc::new(Model::load(&tiny.join("model")).unwrap());
    let registry = AdapterRegistry::new(model.config().clone());
    hub::register(&registry, "acme/tiny-a4").unwrap();
    let spec = registry.spec("acme/tiny-a4").unwrap();
    assert!(spec
        .dir
        .ends_with("snapshots/1111111111111111111111111111111111111111"));
    assert_eq!(spec.config.r, 4);
    // A revision other than main follows its ref.
    let v2 = hub::local_or_cached("acme/tiny-a4@v2").unwrap();
    registry.register("a16-from-hub", &v2).unwrap();
    assert_eq!(registry.spec("a16-from-hub").unwrap().config.r, 16);
    // Paged weights from the cache equal the fixture's.
    let from_hub = registry.load("acme/tiny-a4").unwrap();
    let direct =
        openlora::lora::LoraAdapter::load("a4", &tiny.join("adapters/a4"), model.config()).unwrap();
    assert_eq!(
        from_hub.layers[0][0].as_ref().unwrap().a,
        direct.layers[0][0].as_ref().unwrap().a
    );
    // Missing: clear error naming the id, never the server's cache path; a local folder path is
    // used as is.
    let err = hub::register(&registry, "acme/absent")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not in the local hub cache")
            && err.contains("acme/absent")
            && !err.contains(&cache.display().to_string()),
        "{err}"
    );
    assert_eq!(hub::local_or_cached(tiny.to_str().unwrap()).unwrap(), tiny);
    let _ = std::fs::remove_dir_all(&cache);
}
