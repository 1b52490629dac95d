//! Start-up with an on-chain `AdapterRegistry` reads adapters in batches, on the real binary and
//! anvil: with 305 adapter folders the server's JSON-RPC traffic passes through a counting proxy,
//! and every adapter's listing is read (`getAdapter` and `getTrainedOn` per id) in at most a few
//! HTTP requests per page of 250 adapters — not two requests per adapter (1,220 for the start-up
//! read and the first refresh before). The batched answers are the chain's: an adapter registered
//! with its files' hash serves, one registered with another hash is refused with a 404 saying why.

mod metering_common;
use alloy::primitives::{keccak256, Address, B256};
use axum::body::Bytes;
use metering_common::*;
use openlora::chain::contracts::AdapterRegistry::FeeSplit;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const N: usize = 300;

/// HTTP requests (and `eth_call`s in them) that name the registry.
#[derive(Default)]
struct Counts {
    requests: AtomicUsize,
    calls: AtomicUsize,
}

/// A JSON-RPC proxy to `upstream` on a free port that counts what reaches `registry`.
async fn counting_proxy(upstream: String, registry: Address, counts: Arc<Counts>) -> String {
    let to = format!("{registry:?}").to_lowercase();
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |body: Bytes| {
        let (http, upstream, counts, to) =
            (http.clone(), upstream.clone(), counts.clone(), to.clone());
        async move {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let items = match &v {
                Value::Array(a) => a.clone(),
                one => vec![one.clone()],
            };
            let ours = items
                .iter()
                .filter(|i| i["method"] == "eth_call")
                .filter(|i| {
                    i["params"][0]["to"].as_str().map(str::to_lowercase) == Some(to.clone())
                })
                .count();
            if ours > 0 {
                counts.requests.fetch_add(1, Ordering::SeqCst);
                counts.calls.fetch_add(ours, Ordering::SeqCst);
            }
            let r = http
                .post(&upstream)
                .header("content-type", "application/json")
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                r.bytes().await.unwrap(),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

async fn register(chain: &Chain, name: &str, hash: B256) {
    let split = FeeSplit {
        ownerBps: 7000,
        contributorsBps: 0,
        operatorBps: 3000,
    };
    let reg = chain.admin.adapter_registry();
    let call = reg.register(keccak256(name.as_bytes()), hash, 1, 1, vec![], split);
    let r = call.send().await.unwrap().get_receipt().await.unwrap();
    assert!(r.status(), "register {name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_reads_the_adapter_registry_in_batches() {
    let work = prepared_dir("registry-batch", &[5, 6, 7, 8, 9]);
    let fixtures = repo().join("tests/fixtures/tiny/adapters/a4");
    for i in 0..N {
        let d = work.join(format!("adapters/r{i:03}"));
        std::fs::create_dir_all(&d).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::hard_link(fixtures.join(f), d.join(f)).unwrap();
        }
    }
    let a4 = keccak256(std::fs::read(fixtures.join("adapter_model.safetensors")).unwrap());
    let deposits = [1_000_000_000_000_000_000u128];
    let chain = Chain::start(None, &deposits).await;
    register(&chain, "r000", a4).await;
    register(&chain, "r001", keccak256(b"other weights")).await;
    let counts = Arc::new(Counts::default());
    let registry = chain.deployment.adapter_registry;
    let proxy = counting_proxy(chain.url(), registry, counts.clone()).await;
    let mut setup = ServerSetup::for_chain(&work, &chain, 1, 100);
    setup.rpc = proxy;
    let args: Vec<String> = vec![
        "--adapter-registry-address".into(),
        registry.to_string(),
        "--chain-refresh-secs".into(),
        "1".into(),
    ];
    let server = setup.spawn_with(&args);
    // The start-up reads, the background validation and a few refreshes (they read only what the
    // registry's events name).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (requests, calls) = (
        counts.requests.load(Ordering::SeqCst),
        counts.calls.load(Ordering::SeqCst),
    );
    let adapters = N + 5;
    eprintln!("{adapters} adapters: {requests} HTTP requests to the registry, {calls} eth_calls");
    assert!(calls >= 2 * adapters, "every adapter read: {calls} calls");
    let pages = adapters.div_ceil(250);
    assert!(
        requests <= 2 * pages + 6,
        "{requests} HTTP requests for {adapters} adapters"
    );

    let (http, url) = (reqwest::Client::new(), server.url(""));
    let (status, body) = complete(&http, &url, &api_key(0), "r000", &prompt_for(1), 3, false).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = complete(&http, &url, &api_key(0), "r001", &prompt_for(1), 3, false).await;
    assert_eq!(status, 404, "{body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("refused"), "{body}");
}
