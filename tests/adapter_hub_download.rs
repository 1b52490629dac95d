//! Adapters by hub id, online: a minimal hub (the `/{repo}/resolve/{rev}/{file}` endpoint with the
//! headers `hf-hub` reads: `etag`, `x-repo-commit`, ranged `Content-Range`) is served on 127.0.0.1
//! from the fixture adapter, and `HF_ENDPOINT` points at it. A missing adapter is downloaded into
//! an empty cache and registers with the fixture's exact weights; a second resolve is served from
//! the cache (the server counts requests); an id the hub lacks is a clear error; with
//! `HF_HUB_OFFLINE=1` nothing is fetched; a file over `OPENLORA_HUB_MAX_BYTES` is refused without
//! a snapshot; a hub that never answers fails at `OPENLORA_HUB_TIMEOUT_SECS`.

mod common;
use common::*;
use openlora::lora::{hub, AdapterRegistry};
use openlora::model::Model;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const COMMIT: &str = "3333333333333333333333333333333333333333";

/// Serves `acme/tiny-a4` at revision `main` from `dir`; every other path is a 404.
fn serve_hub(dir: PathBuf, hits: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut range = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("range") {
                        range = Some(v.trim().to_string());
                    }
                }
            }
            hits.fetch_add(1, Ordering::SeqCst);
            let file = path
                .strip_prefix("/acme/tiny-a4/resolve/main/")
                .map(|f| dir.join(f))
                .filter(|p| p.is_file());
            let Some(file) = file else {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                continue;
            };
            let body = std::fs::read(&file).unwrap();
            let n = body.len();
            // `bytes=a-b` or `bytes=a-`.
            let (a, b) = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.split_once('-'))
                .map(|(a, b)| {
                    (
                        a.parse::<usize>().unwrap_or(0),
                        b.parse::<usize>().map_or(n - 1, |b| b.min(n - 1)),
                    )
                })
                .unwrap_or((0, n - 1));
            let part = &body[a..=b];
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\netag: \"{:x}\"\r\nx-repo-commit: {COMMIT}\r\ncontent-range: bytes {a}-{b}/{n}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                n * 31 + file.to_string_lossy().len(),
                part.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(part);
        }
    });
    format!("http://{addr}")
}

#[test]
fn missing_hub_adapters_download_into_the_cache_then_resolve_offline() {
    let tiny = fixtures().join("tiny");
    let hits = Arc::new(AtomicUsize::new(0));
    let endpoint = serve_hub(tiny.join("adapters/a4"), hits.clone());
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
    assert!(hits.load(Ordering::SeqCst) >= 2, "both files were fetched");
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
    let before = hits.load(Ordering::SeqCst);
    let again = hub::fetch_into(&cache, &endpoint, "acme/tiny-a4").unwrap();
    assert_eq!(again, spec.dir);
    assert_eq!(hits.load(Ordering::SeqCst), before);

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
    let before = hits.load(Ordering::SeqCst);
    let err = hub::fetch_into(&cache, &endpoint, "acme/other@main")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not in the local hub cache"), "{err}");
    assert_eq!(hits.load(Ordering::SeqCst), before);
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
