//! Start-up at scale, on the real `openlora serve` binary with SmolLM2 and 10,000 adapter folders
//! (hard links to the pirate adapter, so the page cache holds one copy):
//! - `/ready` comes within 1.5 s of a server started with no adapters at all (each adapter folder
//!   was read and validated before `/ready` until now: about 5 s more on the loaded 2-core VM);
//! - an invalid folder is still never served: a request naming it right after `/ready` (before the
//!   background pass reached it) gets a 404 saying it was refused and why, and `/v1/models` lists
//!   exactly the valid adapters;
//! - a valid adapter answers right after `/ready`.

mod common;

use common::serve::{post_json as post, Served};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const N: usize = 10_000;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `N` valid folders `adNNNNN` plus two invalid ones (a garbage header; a tiny-model adapter whose
/// shapes do not fit SmolLM2).
fn adapter_tree(root: &Path) {
    let _ = std::fs::remove_dir_all(root);
    let pirate = repo().join("adapters/pirate");
    for i in 0..N {
        let d = root.join(format!("ad{i:05}"));
        std::fs::create_dir_all(&d).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::hard_link(pirate.join(f), d.join(f)).unwrap();
        }
    }
    let garbage = root.join("zz-garbage");
    std::fs::create_dir_all(&garbage).unwrap();
    std::fs::copy(
        pirate.join("adapter_config.json"),
        garbage.join("adapter_config.json"),
    )
    .unwrap();
    let mut bytes = 64u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[b'{'; 64]);
    std::fs::write(garbage.join("adapter_model.safetensors"), bytes).unwrap();
    let tiny = repo().join("tests/fixtures/tiny/adapters/a4");
    let wrong = root.join("zz-wrong-shape");
    std::fs::create_dir_all(&wrong).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(tiny.join(f), wrong.join(f)).unwrap();
    }
}

fn start(dir: &Path) -> (Served, Duration) {
    let args: Vec<String> = vec![
        "--model".into(),
        common::smollm2_path().display().to_string(),
        "--adapters-dir".into(),
        dir.display().to_string(),
        "--kv-cache-mb".into(),
        "16".into(),
    ];
    let t = Instant::now();
    let s = Served::start(&args, Duration::from_secs(120));
    (s, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_adapters_are_ready_fast_and_bad_ones_still_fail() {
    let work: PathBuf = std::env::temp_dir().join(format!("openlora-scale-{}", std::process::id()));
    adapter_tree(&work.join("many"));
    std::fs::create_dir_all(work.join("none")).unwrap();
    // Warm the page cache and the binary once.
    drop(start(&work.join("none")));
    let (_, base) = start(&work.join("none"));
    let (server, many) = start(&work.join("many"));
    eprintln!("/ready: no adapters {base:?}, {N} adapters {many:?}");

    let chat = server.url("/v1/chat/completions");
    for bad in ["zz-wrong-shape", "zz-garbage"] {
        let body = json!({"model": bad, "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi"}]});
        let (status, e) = post(&chat, &body).await;
        assert_eq!(status, 404, "{bad}: {e}");
        let msg = e["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("refused"), "{bad}: {e}");
    }
    let body = json!({"model": "ad04321", "max_tokens": 2,
        "messages": [{"role": "user", "content": "hi"}]});
    let (status, r) = post(&chat, &body).await;
    assert_eq!(status, 200, "{r}");

    let models = reqwest::get(server.url("/v1/models")).await.unwrap();
    let models: serde_json::Value = models.json().await.unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), N + 1, "the base and every valid adapter");
    assert!(
        !ids.iter().any(|i| i.starts_with("zz-")),
        "an invalid adapter listed"
    );
    assert!(
        many < base + Duration::from_millis(1500),
        "/ready took {many:?} with {N} adapters, {base:?} with none"
    );
    let _ = std::fs::remove_dir_all(&work);
}
