//! The sequence cap and the queue cap count choices, on the real `openlora serve` binary with the
//! SmolLM2 GGUF (`--max-num-seqs 2 --max-queue 3`):
//! - a request of `n = 2` running fills the cap: a second one of `n = 2` gets no token before the
//!   first has finished (its forks never push the running choices past the cap), and while it
//!   waits `vllm:num_requests_waiting` / `_running` read 2 / 2;
//! - with 2 choices waiting, a request of `n = 2` gets 429 and one of `n = 1` is queued (3 = cap);
//! - a request whose `n` alone exceeds `--max-num-seqs`, or whose choices (prompts x n) exceed
//!   `--max-queue`, gets a 400 naming `n`, whatever the load.

mod common;

use common::serve::{get, post_json as post, sample, Served};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn body(n: usize, max_tokens: usize, stream: bool) -> Value {
    json!({"model": "SmolLM2-135M-Instruct", "prompt": "Once upon a time", "n": n,
           "max_tokens": max_tokens, "ignore_eos": true, "temperature": 0, "stream": stream})
}

/// A streamed completion: (time of its first token chunk, time of its last chunk before [DONE]).
async fn stream_times(
    url: String,
    b: Value,
    started: tokio::sync::oneshot::Sender<()>,
) -> (Instant, Instant) {
    let mut resp = reqwest::Client::new()
        .post(url)
        .json(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (mut first, mut last, mut started) = (None, None, Some(started));
    let mut buf = String::new();
    while let Some(c) = resp.chunk().await.unwrap() {
        buf.push_str(&String::from_utf8_lossy(&c));
        while let Some(i) = buf.find("\n\n") {
            let ev: String = buf.drain(..i + 2).collect();
            let Some(data) = ev.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data).unwrap();
            if v["choices"].as_array().is_some_and(|c| !c.is_empty()) {
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
                if let Some(tx) = started.take() {
                    let _ = tx.send(());
                }
            }
        }
    }
    (first.unwrap(), last.unwrap())
}

fn metrics(s: &Served) -> String {
    get(s.port, "/metrics").expect("metrics").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_and_queue_caps_count_choices() {
    let model = common::smollm2_path();
    let args: Vec<String> = [
        "--model",
        model.to_str().unwrap(),
        "--max-num-seqs",
        "2",
        "--max-queue",
        "3",
    ]
    .map(String::from)
    .to_vec();
    let server = Served::start(&args, Duration::from_secs(120));
    let url = server.url("/v1/completions");

    // n alone above the sequence cap; choices above the queue cap: 400 naming `n`, nothing queued.
    for (b, flag) in [
        (body(3, 4, false), "--max-num-seqs"),
        (
            json!({"model": "SmolLM2-135M-Instruct", "prompt": ["a", "b"], "n": 2, "max_tokens": 4}),
            "--max-queue",
        ),
    ] {
        let (status, e) = post(&url, &b).await;
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["error"]["param"], "n", "{e}");
        assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(flag),
            "{e}"
        );
    }

    // A: n = 2, running (the cap is full once it has forked).
    let (tx_a, rx_a) = tokio::sync::oneshot::channel();
    let a = tokio::spawn(stream_times(url.clone(), body(2, 64, true), tx_a));
    rx_a.await.expect("A streams");
    // B: n = 2, must wait for A.
    let (tx_b, _rx_b) = tokio::sync::oneshot::channel();
    let b = tokio::spawn(stream_times(url.clone(), body(2, 4, true), tx_b));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = metrics(&server);
        let (w, r) = (
            sample(&m, "vllm:num_requests_waiting"),
            sample(&m, "vllm:num_requests_running"),
        );
        assert!(
            !a.is_finished(),
            "A finished before B was seen waiting (waiting {w:?}, running {r:?})"
        );
        assert!(
            r <= Some(2.0),
            "running choices {r:?} exceed --max-num-seqs 2"
        );
        if w == Some(2.0) {
            assert_eq!(r, Some(2.0), "A's two choices run while B's two wait");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never counted as 2 waiting choices: {w:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The queue holds 2 choices of 3: n = 2 does not fit (429), n = 1 does.
    let (status, e) = post(&url, &body(2, 1, false)).await;
    assert_eq!(status, 429, "{e}");
    assert_eq!(e["error"]["type"], "rate_limit_error", "{e}");
    let d = tokio::spawn({
        let url = url.clone();
        async move { post(&url, &body(1, 1, false)).await }
    });
    let (a_first, a_last) = a.await.unwrap();
    let (b_first, _) = b.await.unwrap();
    assert!(a_first < a_last);
    assert!(
        b_first > a_last,
        "B produced a token while A's two choices ran (cap 2)"
    );
    let (status, v) = d.await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 1);
}
