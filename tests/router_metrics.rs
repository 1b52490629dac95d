//! `/metrics` read the way the Gateway API Inference Extension's endpoint picker (llm-d's router)
//! reads it, on the real `openlora serve` binary (tiny model, 2 device slots, 4 adapters), at
//! idle, after page-ins, after evictions and under load:
//! - of each LoRA-info family (`vllm:lora_requests_info`, `openlora_lora_resident_info`) the
//!   newest series (largest value) is taken; `running_lora_adapters` / `waiting_lora_adapters`
//!   are split on `,` and trimmed, `max_lora` must parse as an integer; every name read back is a
//!   registered adapter, and the resident list equals the adapters `/v1/adapters` shows on device;
//! - `vllm:cache_config_info{block_size, num_gpu_blocks}` parses as integers: 16-token blocks and
//!   the pool size the server logged at start-up (`kv_blocks`);
//! - `vllm:num_requests_waiting` / `_running` are whole numbers, `vllm:kv_cache_usage_perc` in [0, 1].

mod common;

use common::serve::{get, Served};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

const ADAPTERS: [&str; 4] = ["r1", "r2", "r3", "r4"];

/// One series: its labels and value.
type Series = (BTreeMap<String, String>, f64);

/// Every series of `family` in a Prometheus text (labels unescaped as the text format says).
fn family(text: &str, family: &str) -> Vec<Series> {
    let mut out = vec![];
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(family) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => {
                let end = r.rfind('}').expect("closing brace");
                (parse_labels(&r[..end]), r[end + 1..].trim())
            }
            None if rest.starts_with(' ') => (BTreeMap::new(), rest.trim()),
            None => continue, // a longer metric name
        };
        out.push((labels, value.parse().expect("sample value")));
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    while chars.peek().is_some() {
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(chars.next(), Some('"'));
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("dangling escape"),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(name.trim().to_string(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

/// What the endpoint picker takes from a LoRA-info family: the newest series' running and
/// waiting adapters (split on `,`, trimmed, empty dropped) and `max_lora` as an integer.
#[derive(Debug, Clone)]
struct LoraInfo {
    running: BTreeSet<String>,
    waiting: BTreeSet<String>,
    max_lora: i64,
    stamp: f64,
}

fn lora_info(text: &str, name: &str) -> LoraInfo {
    let series = family(text, name);
    let (labels, stamp) = series
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or_else(|| panic!("{name} missing"));
    let list = |k: &str| -> BTreeSet<String> {
        labels[k]
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    LoraInfo {
        running: list("running_lora_adapters"),
        waiting: list("waiting_lora_adapters"),
        max_lora: labels["max_lora"]
            .parse()
            .unwrap_or_else(|_| panic!("{name}: max_lora {:?}", labels["max_lora"])),
        stamp,
    }
}

/// `vllm:cache_config_info`'s (block_size, num_gpu_blocks) as integers.
fn cache_config(text: &str) -> (u64, u64) {
    let series = family(text, "vllm:cache_config_info");
    assert_eq!(
        series.len(),
        1,
        "one vllm:cache_config_info series: {series:?}"
    );
    let l = &series[0].0;
    (
        l["block_size"].parse().expect("integer block_size"),
        l["num_gpu_blocks"].parse().expect("integer num_gpu_blocks"),
    )
}

fn gauge(text: &str, name: &str) -> f64 {
    let s = family(text, name);
    assert_eq!(s.len(), 1, "{name}: {s:?}");
    s[0].1
}

struct Scrape {
    requests: LoraInfo,
    resident: LoraInfo,
}

/// Reads `/metrics` by the router's rules and checks what always holds.
fn scrape(server: &Served, blocks: u64) -> Scrape {
    let text = get(server.port, "/metrics").expect("metrics").1;
    assert_eq!(cache_config(&text), (16, blocks));
    for g in ["vllm:num_requests_waiting", "vllm:num_requests_running"] {
        let v = gauge(&text, g);
        assert!(v >= 0.0 && v.fract() == 0.0, "{g} = {v}");
    }
    let kv = gauge(&text, "vllm:kv_cache_usage_perc");
    assert!((0.0..=1.0).contains(&kv), "kv usage {kv}");
    let registered: BTreeSet<String> = ADAPTERS.iter().map(|s| s.to_string()).collect();
    let requests = lora_info(&text, "vllm:lora_requests_info");
    let resident = lora_info(&text, "openlora_lora_resident_info");
    for info in [&requests, &resident] {
        assert!(
            info.running.is_subset(&registered) && info.waiting.is_subset(&registered),
            "{info:?}"
        );
    }
    assert_eq!(resident.max_lora, 2, "device slots");
    assert!(resident.running.len() <= 2, "{resident:?}");
    Scrape { requests, resident }
}

/// The adapters `/v1/adapters` shows on the device tier.
fn on_device(server: &Served) -> BTreeSet<String> {
    let v: Value = serde_json::from_str(&get(server.port, "/v1/adapters").unwrap().1).unwrap();
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["tier"] == "device")
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

fn counter(server: &Served, name: &str) -> f64 {
    let text = get(server.port, "/metrics").unwrap().1;
    family(&text, name).iter().map(|s| s.1).sum()
}

async fn complete(url: &str, model: &str, max_tokens: usize) {
    let body = json!({"model": model, "prompt": [5, 6, 7], "max_tokens": max_tokens, "ignore_eos": true, "temperature": 0});
    let r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_read_by_the_router_rules_across_load_page_ins_and_evictions() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = std::env::temp_dir().join(format!("openlora-router-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    for (name, src) in ADAPTERS.iter().zip(["a4", "a8", "a16", "a4"]) {
        let d = work.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(
                repo.join("tests/fixtures/tiny/adapters").join(src).join(f),
                d.join(f),
            )
            .unwrap();
        }
    }
    let args: Vec<String> = [
        "--model",
        &repo.join("tests/fixtures/tiny/model").display().to_string(),
        "--adapters-dir",
        &work.display().to_string(),
        "--adapter-device-slots",
        "2",
        "--kv-cache-mb",
        "2",
    ]
    .map(String::from)
    .to_vec();
    let server = Served::start(&args, Duration::from_secs(60));
    let log = server.log_text();
    let blocks: u64 = log
        .split("kv_blocks=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or_else(|| panic!("no kv_blocks in the start-up log:\n{log}"));
    let url = server.url("/v1/completions");

    // Idle: nothing in flight, nothing resident.
    let idle = scrape(&server, blocks);
    assert!(
        idle.requests.running.is_empty() && idle.resident.running.is_empty(),
        "{:?}",
        idle.resident
    );

    // Page-ins: r1 then r2 fill the two slots.
    let mut last = idle.resident.stamp;
    for (i, a) in ["r1", "r2"].iter().enumerate() {
        complete(&url, a, 4).await;
        let s = scrape(&server, blocks);
        assert_eq!(s.resident.running.len(), i + 1, "{:?}", s.resident);
        assert_eq!(s.resident.running, on_device(&server));
        assert!(
            s.resident.stamp >= last,
            "the residency series' stamp never goes back"
        );
        last = s.resident.stamp;
    }
    // Evictions: r3 and r4 each push the least recently used adapter out.
    let evictions = counter(&server, "openlora_adapter_evictions_total");
    for a in ["r3", "r4"] {
        complete(&url, a, 4).await;
        let s = scrape(&server, blocks);
        assert!(
            s.resident.running.contains(a),
            "{a} resident: {:?}",
            s.resident
        );
        assert_eq!(s.resident.running.len(), 2);
        assert_eq!(s.resident.running, on_device(&server));
    }
    assert!(counter(&server, "openlora_adapter_evictions_total") >= evictions + 2.0);

    // Load: all four adapters at once on two slots (page-ins and evictions while requests run).
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move { complete(&url, ADAPTERS[i % 4], 120).await })
        })
        .collect();
    let mut in_flight = BTreeSet::new();
    while !calls.iter().all(|c| c.is_finished()) {
        let s = scrape(&server, blocks);
        in_flight.extend(s.requests.running.iter().cloned());
        in_flight.extend(s.requests.waiting.iter().cloned());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for c in calls {
        c.await.unwrap();
    }
    assert!(
        !in_flight.is_empty(),
        "vllm:lora_requests_info named the adapters in flight"
    );
    let done = scrape(&server, blocks);
    assert!(
        done.requests.running.is_empty() && done.requests.waiting.is_empty(),
        "{:?}",
        done.requests
    );
    assert_eq!(done.resident.running, on_device(&server));
    let _ = std::fs::remove_dir_all(&work);
}
