//! Adapters by hub id, online: a minimal hub (`common::minihub`) is served on 127.0.0.1 from the
//! fixture adapter, and `HF_ENDPOINT` points at it. A missing adapter is downloaded into
//! an empty cache and registers with the fixture's exact weights; a second resolve is served from
//! the cache (the server counts requests); an id the hub lacks is a clear error; with
//! `HF_HUB_OFFLINE=1` nothing is fetched; a file over `OPENLORA_HUB_MAX_BYTES` is refused without
//! a snapshot; a hub that never answers fails at `OPENLORA_HUB_TIMEOUT_SECS`.

mod common;
use common::minihub::{MiniHub, COMMIT};
use common::*;
use openlora::lora::{hub, AdapterRegistry};
use openlora::model::Model;
use std::net::TcpListener;
use std::sync::Arc;

#[test]
fn missing_hub_adapters_download_into_the_cache_then_resolve_offline() {
    let tiny = fixtures().join("tiny");
    let hub = MiniHub::serve(vec![("acme/tiny-a4", tiny.join("adapters/a4"))]);
    let endpoint = hub.url.clone();
    let cache_dir = std::env::temp_dir().join(format!("openlora-hubdl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache_dir);
    // The only test in this binary: no other thread reads the environment.
    std::env::remove_var("HF_HUB_OFFLINE");
    std::env::remove_var("HF_TOKEN");
    std::env::set_var("HF_ENDPOINT", &endpoint);
    let cache = hf_hub_cache(&cache_dir);

    let model = Arc::new(Model::load(&tiny.join("model")).unwrap());
    let registry = AdapterRegistry::new(model.config().clone());
    hub::register_from(&registry, &cache, "acme/tiny-a4").unwrap();
    let spec = registry.spec("acme/tiny-a4").unwrap();
    assert!(
        spec.dir.ends_with(format!("snapshots/{COMMIT}")),
        "{:?}",
        spec.dir
    );
    assert!(hub.hits() >= 2, "both files were fetched");
    let from_hub = registry.load("acme/tiny-a4").unwrap();
    let direct =
        openlora::lora::LoraAdapter::load("a4", &tiny.join("adapters/a4"), model.config()).unwrap();
    for (l, (h, d)) in from_hub.layers.iter().zip(&direct.layers).enumerate() {
        for (p, (h, d)) in h.iter().zip(d).enumerate() {
            assert_eq!(
                h.as_ref().map(|w| (&w.a, &w.b)),
                d.as_ref().map(|w| (&w.a, &w.b)),
                "layer {l} proj {p}"
            );
        }
    }

    // Cached now: resolving again touches no network.
    let before = hub.hits();
    let again = hub::fetch_into(&cache, &endpoint, "acme/tiny-a4").unwrap();
    assert_eq!(again, spec.dir);
    assert_eq!(hub.hits(), before);

    // Not on the hub: a clear error naming the id, and nothing registered.
    let err = hub::register_from(&registry, &cache, "acme/absent")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("acme/absent") && err.contains("download"),
        "{err}"
    );
    assert!(registry.spec("acme/absent").is_none());

    // Offline: a missing id is not fetched.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let before = hub.hits();
    let err = hub::fetch_into(&cache, &endpoint, "acme/other@main")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not in the local hub cache"), "{err}");
    assert_eq!(hub.hits(), before);
    std::env::remove_var("HF_HUB_OFFLINE");

    // A file over the size cap is refused and leaves no snapshot behind.
    let small = hf_hub_cache(&cache_dir.join("small"));
    std::env::set_var("OPENLORA_HUB_MAX_BYTES", "64");
    let err = hub::fetch_into(&small, &endpoint, "acme/tiny-a4")
        .unwrap_err()
        .to_string();
    assert!(err.contains("over the 64 byte limit"), "{err}");
    assert!(!cache_dir
        .join("small/models--acme--tiny-a4/snapshots")
        .exists());
    std::env::remove_var("OPENLORA_HUB_MAX_BYTES");

    // A hub that never answers: the download gives up at its deadline.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().take(4).collect();
        std::thread::sleep(std::time::Duration::from_secs(30));
        drop(held);
    });
    std::env::set_var("OPENLORA_HUB_TIMEOUT_SECS", "1");
    let started = std::time::Instant::now();
    let err = hub::fetch_into(&small, &silent_url, "acme/tiny-a4")
        .unwrap_err()
        .to_string();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{err}"
    );
    assert!(err.contains("acme/tiny-a4"), "{err}");
    std::env::remove_var("OPENLORA_HUB_TIMEOUT_SECS");
    let _ = std::fs::remove_dir_all(&cache_dir);
}

fn hf_hub_cache(dir: &std::path::Path) -> hf_hub::Cache {
    hf_hub::Cache::new(dir.to_path_buf())
}
