//! Acceptance (issue 12, engine supervision): the real `openlora serve` binary, built with the
//! test-only `fault-injection` feature, metering into a real ledger against a real anvil, has its
//! engine panic mid-batch (`OPENLORA_FAULT_PANIC_AFTER_STEPS`) while four calls are in flight.
//! Every in-flight call fails as an OpenAI-shaped 500 `server_error` (a stream: an error event,
//! then `[DONE]`), `/ready` turns 503 while the engine is down and 200 once it restarted
//! (`openlora_engine_restarts_total` 1), `/health` stays up, the ledger bills none of the failed
//! calls, and a later call succeeds and is billed.
//!
//! Run: `cargo test --features fault-injection --test engine_supervision` (scripts/test.sh does).
#![cfg(feature = "fault-injection")]

mod metering_common;
use metering_common::*;
use openlora::ledger::Store;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Sequences that must be in flight before the fault fires, and the steps it waits then.
const IN_FLIGHT: usize = 4;

fn body(prompt: &[u32], max_tokens: u32, stream: bool) -> Value {
    json!({"model": "a4", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": stream})
}

/// (status, full body text) of one completion.
async fn call(http: &reqwest::Client, url: &str, key: &str, body: Value) -> (u16, String) {
    post_completion(http, url, key, &body).await
}

async fn status_of(http: &reqwest::Client, url: &str) -> u16 {
    http.get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

fn assert_server_error(v: &Value, what: &str) {
    let e = &v["error"];
    assert_eq!(e["type"], "server_error", "{what}: {v}");
    assert!(e["message"].is_string(), "{what}: {v}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{what}: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_panic_fails_in_flight_calls_unbilled_and_the_engine_restarts() {
    let work = fresh_dir("supervision");
    write_adapters(&work.join("adapters"));
    write_datanets(&work.join("datanets"), &[5, 6, 7, 8, 9]);
    let deposits = [1_000_000_000_000_000_000u128; 2];
    let chain = Chain::start(None, &deposits).await;
    let setup = ServerSetup {
        work: work.clone(),
        rpc: chain.url(),
        settlement: chain.deployment.settlement,
        payers: 2,
        max_records: 1000,
        pause_after_submit: false,
        extra_keys: vec![],
    };
    // The only test in this binary: the child inherits these, nothing else reads them.
    std::env::set_var("OPENLORA_FAULT_PANIC_AFTER_STEPS", "3");
    std::env::set_var("OPENLORA_FAULT_PANIC_MIN_SEQS", IN_FLIGHT.to_string());
    std::env::set_var("OPENLORA_FAULT_RESTART_DELAY_MS", "3000");
    let server = setup.spawn();
    let url = server.url("");
    let http = reqwest::Client::new();
    let prompt = prompt_for(4);

    // Before the fault: a call runs to its length (so the in-flight ones below are still
    // generating when the engine panics) and is billed.
    let (status, text) = call(&http, &url, &api_key(0), body(&prompt, 60, false)).await;
    assert_eq!(status, 200, "{text}");
    let before: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(before["choices"][0]["finish_reason"], "length", "{before}");
    let before_id = before["id"].as_str().unwrap().to_string();
    assert_eq!(status_of(&http, &format!("{url}/ready")).await, 200);

    // Four calls in flight (two streamed), the engine panics at their third step together.
    let calls: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let (http, url) = (http.clone(), url.clone());
            let stream = i % 2 == 1;
            let b = body(&prompt, 200, stream);
            tokio::spawn(async move { (stream, call(&http, &url, &api_key(i % 2), b).await) })
        })
        .collect();
    // /ready turns 503 while the engine is down; /health stays up.
    let start = Instant::now();
    let mut saw_not_ready = false;
    while start.elapsed() < Duration::from_secs(30) {
        if status_of(&http, &format!("{url}/ready")).await == 503 {
            saw_not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_not_ready, "/ready never answered 503 after the panic");
    assert_eq!(status_of(&http, &format!("{url}/health")).await, 200);
    let r: Value = http
        .get(format!("{url}/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["error"]["type"], "service_unavailable", "{r}");

    for c in calls {
        let (stream, (status, text)) = c.await.unwrap();
        if !stream {
            assert_eq!(status, 500, "{text}");
            assert_server_error(&serde_json::from_str(&text).unwrap(), "non-streamed call");
            continue;
        }
        // A stream: tokens, then an error event, then [DONE] (and no usage: nothing billed).
        assert_eq!(status, 200, "{text}");
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
        let events: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let (last, tokens) = events.split_last().expect("events before [DONE]");
        assert_server_error(last, "stream");
        assert!(!tokens.is_empty(), "the stream had produced tokens: {text}");
        assert!(
            tokens
                .iter()
                .all(|t| t["choices"][0]["finish_reason"].is_null()),
            "{text}"
        );
    }

    // The engine comes back: /ready 200, one restart counted.
    let start = Instant::now();
    while status_of(&http, &format!("{url}/ready")).await != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "/ready did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = metrics_text(&http, &url).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "openlora_engine_restarts_total 1"),
        "{metrics}"
    );
    server.wait_for("the engine panicked", Duration::from_secs(5));

    // Nothing billed for the failed calls: the ledger holds the first call only.
    let store = Store::open(&setup.ledger()).unwrap();
    assert_eq!(
        billed_ids(&store),
        vec![before_id.clone()],
        "only the call before the fault is billed"
    );

    // A later call (streamed, same prompt) succeeds on the restarted engine and is billed.
    let (status, text) = call(&http, &url, &api_key(1), body(&prompt, 60, true)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(!text.contains("\"error\""), "{text}");
    let (status, text) = call(&http, &url, &api_key(0), body(&prompt, 60, false)).await;
    assert_eq!(status, 200, "{text}");
    let after: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        after["choices"][0]["text"], before["choices"][0]["text"],
        "the restarted engine answers as before"
    );
    let ids = billed_ids(&store);
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(ids.contains(&after["id"].as_str().unwrap().to_string()));
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}
