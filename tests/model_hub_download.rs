//! Base models by hub id, from a minimal local hub (`common::minihub`, `HF_ENDPOINT` pointed at it):
//! - the real `openlora serve --model org/name:file.gguf` downloads the SmolLM2 GGUF into an empty
//!   cache on its first start and answers exactly as the same file served from its local path; a
//!   second start makes no request to the hub; `HF_HUB_OFFLINE=1` with an empty cache fetches
//!   nothing and fails clearly; an unknown id fails clearly naming it; a file over
//!   `OPENLORA_HUB_MAX_BYTES` is refused; `openlora download` fills a cache an offline server
//!   then starts from;
//! - an HF safetensors repo whose weights are sharded (`model.safetensors.index.json`) downloads
//!   every shard and gives the same logits as the unsharded local folder; an index naming a shard
//!   outside the repo is refused before anything is fetched.

mod common;
use common::minihub::{MiniHub, COMMIT};
use common::*;
use openlora::hub::{fetch_model, ModelRef};
use openlora::model::Model;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GGUF: &str = "smollm2-135m-instruct.Q4_1.gguf";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `openlora serve --model <model> [extra]` with `env`; stderr goes to `log`.
fn serve_with(model: &str, extra: &[&str], env: &[(&str, &str)], log: &Path) -> (Child, u16) {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openlora"));
    cmd.args(["serve", "--model", model, "--port", &port.to_string()])
        .args(extra)
        .args(["--kv-cache-mb", "64", "--threads", "2"])
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("OPENLORA_HUB_MAX_BYTES")
        .env_remove("HF_TOKEN")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd.spawn().unwrap(), port)
}

fn serve(model: &str, env: &[(&str, &str)], log: &Path) -> (Child, u16) {
    serve_with(model, &[], env, log)
}

fn log_of(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Waits for `/ready`; panics with the log if the server exits first.
async fn wait_ready(child: &mut Child, port: u16, log: &Path) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("server exited ({st}) before ready:\n{}", log_of(log));
        }
        let url = format!("http://127.0.0.1:{port}/ready");
        if http.get(&url).send().await.is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(Instant::now() < deadline, "not ready:\n{}", log_of(log));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The served model id and a greedy completion of a fixed prompt.
async fn ask(port: u16) -> (String, String) {
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/v1");
    let models: Value = http
        .get(format!("{base}/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = models["data"][0]["id"].as_str().unwrap().to_string();
    let body = json!({"model": id, "prompt": "The capital of France is", "max_tokens": 12,
                      "temperature": 0, "ignore_eos": true});
    let r: Value = http
        .post(format!("{base}/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = r["choices"][0]["text"].as_str().unwrap_or_default();
    assert!(!text.is_empty(), "{r}");
    (id, text.to_string())
}

/// Runs a server that must fail to start; returns its log.
fn failed_start(model: &str, env: &[(&str, &str)], log: &Path) -> String {
    let (mut child, _) = serve(model, env, log);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(!st.success(), "{model} must not start:\n{}", log_of(log));
            return log_of(log);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{model} did not fail:\n{}", log_of(log));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gguf_model_by_hub_id_downloads_once_then_serves_from_the_cache() {
    let scratch = Scratch::new("model-hub-gguf");
    let repo = scratch.0.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let local = smollm2_path();
    std::os::unix::fs::symlink(&local, repo.join(GGUF)).unwrap();
    let hub = MiniHub::serve(vec![("acme/smol", repo)]);
    let cache = scratch.0.join("cache");
    let cache_s = cache.to_str().unwrap();
    let env = [("HF_ENDPOINT", hub.url.as_str()), ("HF_HUB_CACHE", cache_s)];
    let id = format!("acme/smol:{GGUF}");

    // Reference: the same file from its local path.
    let log = scratch.0.join("local.log");
    let (mut child, port) = serve(local.to_str().unwrap(), &env, &log);
    wait_ready(&mut child, port, &log).await;
    let (_, reference) = ask(port).await;
    stop(child);
    assert_eq!(hub.hits(), 0, "a local path never touches the hub");

    // First start: downloads into the empty cache (bytes reported on stderr).
    let log = scratch.0.join("first.log");
    let (mut child, port) = serve(&id, &env, &log);
    wait_ready(&mut child, port, &log).await;
    let (served, text) = ask(port).await;
    stop(child);
    assert_eq!(served, "acme/smol");
    assert_eq!(text, reference);
    assert!(hub.hits() >= 2, "resolve + redirect: {}", hub.hits());
    let blob = cache.join(format!("models--acme--smol/snapshots/{COMMIT}/{GGUF}"));
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        std::fs::read(&local).unwrap()
    );
    let first = log_of(&log);
    assert!(
        first.contains(&format!("downloading acme/smol {GGUF}")),
        "{first}"
    );

    // Second start (the file named by --gguf-file this time): the cache alone, no request.
    let before = hub.hits();
    let log = scratch.0.join("second.log");
    let (mut child, port) = serve_with("acme/smol", &["--gguf-file", GGUF], &env, &log);
    wait_ready(&mut child, port, &log).await;
    assert_eq!(ask(port).await.1, reference);
    stop(child);
    assert_eq!(hub.hits(), before, "a cached model needs no network");

    // Offline with an empty cache: nothing fetched, a clear error.
    let empty = scratch.0.join("empty");
    let offline = [
        ("HF_ENDPOINT", hub.url.as_str()),
        ("HF_HUB_CACHE", empty.to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let err = failed_start(&id, &offline, &scratch.0.join("offline.log"));
    assert!(err.contains("not in the local hub cache"), "{err}");
    assert!(
        !err.contains(empty.to_str().unwrap()),
        "no server path: {err}"
    );
    assert_eq!(hub.hits(), before);

    // Unknown id: a clear error naming it.
    let err = failed_start("acme/absent", &env, &scratch.0.join("absent.log"));
    assert!(err.contains("acme/absent") && err.contains("404"), "{err}");
    let err = failed_start("acme/smol:missing.gguf", &env, &scratch.0.join("m.log"));
    assert!(err.contains("missing.gguf") && err.contains("404"), "{err}");

    // OPENLORA_HUB_MAX_BYTES caps model files too, and a refused file leaves no snapshot.
    let capped = [
        ("HF_ENDPOINT", hub.url.as_str()),
        ("HF_HUB_CACHE", empty.to_str().unwrap()),
        ("OPENLORA_HUB_MAX_BYTES", "4096"),
    ];
    let err = failed_start(&id, &capped, &scratch.0.join("cap.log"));
    assert!(err.contains("over the 4096 byte limit"), "{err}");
    assert!(!empty.join("models--acme--smol/snapshots").exists());

    // `openlora download` fills a cache (the Helm init container); a server started offline on
    // it then serves the same answers without a request to the hub.
    let out = Command::new(env!("CARGO_BIN_EXE_openlora"))
        .args(["download", "--model", &id])
        .env("HF_ENDPOINT", &hub.url)
        .env("HF_HUB_CACHE", &empty)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("OPENLORA_HUB_MAX_BYTES")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let printed = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert_eq!(
        std::fs::read(&printed).unwrap(),
        std::fs::read(&local).unwrap()
    );
    let before = hub.hits();
    let log = scratch.0.join("offline-ok.log");
    let (mut child, port) = serve(&id, &offline, &log);
    wait_ready(&mut child, port, &log).await;
    assert_eq!(ask(port).await.1, reference);
    stop(child);
    assert_eq!(hub.hits(), before);
}

/// The tiny fixture model with its tensors split over two shards and an index.
fn write_sharded(tiny: &Path, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    for f in ["config.json", "generation_config.json"] {
        std::fs::copy(tiny.join(f), out.join(f)).unwrap();
    }
    let bytes = std::fs::read(tiny.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let half = names.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [&names[..half], &names[half..]].into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &out.join(&file)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), json!(file));
        }
    }
    let index = json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(out.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn a_sharded_safetensors_model_downloads_every_shard_and_matches_the_local_folder() {
    let scratch = Scratch::new("model-hub-sharded");
    let tiny = fixtures().join("tiny/model");
    let sharded = scratch.0.join("sharded");
    write_sharded(&tiny, &sharded);
    let evil = scratch.0.join("evil");
    std::fs::create_dir_all(&evil).unwrap();
    std::fs::copy(tiny.join("config.json"), evil.join("config.json")).unwrap();
    let bad_index =
        json!({"weight_map": {"model.embed_tokens.weight": "../../../outside.safetensors"}});
    std::fs::write(
        evil.join("model.safetensors.index.json"),
        bad_index.to_string(),
    )
    .unwrap();
    let hub = MiniHub::serve(vec![("acme/tiny", sharded.clone()), ("acme/evil", evil)]);
    let cache = hf_hub::Cache::new(scratch.0.join("cache"));

    let r = ModelRef::parse("acme/tiny", None).unwrap();
    let dir = fetch_model(&cache, &hub.url, &r).unwrap();
    assert!(dir.ends_with(format!("snapshots/{COMMIT}")), "{dir:?}");
    for f in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(sharded.join(f)).unwrap(),
            "{f}"
        );
    }
    let from_hub = Arc::new(Model::load_with(&dir, &f32_weights()).unwrap());
    let local = Arc::new(Model::load_with(&tiny, &f32_weights()).unwrap());
    let prompt = [1u32, 5, 9, 2, 7];
    assert_eq!(
        prompt_logits(&from_hub, &prompt, None),
        prompt_logits(&local, &prompt, None)
    );
    // Cached: resolving again makes no request.
    let before = hub.hits();
    assert_eq!(fetch_model(&cache, &hub.url, &r).unwrap(), dir);
    assert_eq!(hub.hits(), before);

    // A shard name leaving the repo is refused; nothing lands outside the cache.
    let err = fetch_model(
        &cache,
        &hub.url,
        &ModelRef::parse("acme/evil", None).unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("outside.safetensors"), "{err}");
    assert!(!scratch.0.join("outside.safetensors").exists());
}
