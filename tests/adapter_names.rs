//! Adapter names cannot break the metrics, on the real `openlora serve` binary (tiny model):
//! - names outside the one alphabet (`,` `"` `\` `:` spaces, non-ASCII, a leading `.`/`-`/`/`,
//!   more than 256 bytes) are refused by `/v1/load_lora_adapter` with a 400 naming `lora_name`,
//!   and an `--adapters-dir` folder so named is skipped at start-up with a message;
//! - names using the whole alphabet load, serve, and read back unchanged from the comma-separated
//!   label lists (`vllm:lora_requests_info`, `openlora_lora_resident_info`) the way a router
//!   splits them, and the whole `/metrics` text passes `promtool check metrics`.

mod common;

use common::serve::{get, post_json as post, Served};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn copy_adapter(src: &str, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    let from = repo().join("tests/fixtures/tiny/adapters").join(src);
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(from.join(f), dest.join(f)).unwrap();
    }
}

/// `promtool check metrics` on `text`: the problems it reports, less the one lint every `vllm:`
/// name trips (promtool has no flag to turn one lint off). A text it cannot parse fails the test.
fn promtool_problems(text: &str) -> Vec<String> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`; scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let code = out.status.code();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(code, Some(0 | 3)),
        "promtool could not parse /metrics ({code:?}):\n{said}"
    );
    said.lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !(l.starts_with("vllm:") && l.ends_with("metric names should not contain ':'")))
        .map(String::from)
        .collect()
}

/// The adapter names of label `label` in every series of `family`, split and trimmed as the
/// Gateway API Inference Extension's endpoint picker does.
fn listed(text: &str, family: &str, label: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
    {
        let key = format!("{label}=\"");
        let from = line.find(&key).expect("label present") + key.len();
        let value = &line[from..from + line[from..].find('"').unwrap()];
        out.extend(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_outside_the_alphabet_are_refused_and_metrics_stay_parseable() {
    let work = std::env::temp_dir().join(format!("openlora-names-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    copy_adapter("a4", &work.join("adapters/start.ok"));
    copy_adapter("a4", &work.join("adapters/bad,start"));
    copy_adapter("a8", &work.join("runtime/a8"));
    let args: Vec<String> = vec![
        "--model".into(),
        repo()
            .join("tests/fixtures/tiny/model")
            .display()
            .to_string(),
        "--adapters-dir".into(),
        work.join("adapters").display().to_string(),
        "--adapter-roots".into(),
        work.join("runtime").display().to_string(),
        "--kv-cache-mb".into(),
        "4".into(),
    ];
    let server = Served::start(&args, Duration::from_secs(60));
    assert!(
        server.log_text().contains("skipping adapter bad,start"),
        "{}",
        server.log_text()
    );
    let load = server.url("/v1/load_lora_adapter");
    let path = work.join("runtime/a8").display().to_string();

    let long = "x".repeat(257);
    for bad in [
        "a,b",
        "a\"b",
        "a\\b",
        "a:b",
        "a b",
        "tab\there",
        "é",
        ".x",
        "-x",
        "/x",
        "",
        &long,
    ] {
        let (status, e) = post(&load, &json!({"lora_name": bad, "lora_path": path})).await;
        assert_eq!(status, 400, "{bad:?}: {e}");
        assert_eq!(e["error"]["param"], "lora_name", "{bad:?}: {e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("A-Z a-z 0-9 . _ - /"),
            "{e}"
        );
    }
    let good = ["Org.9/ada_pt-er", "z", "x-y.z_1"];
    for name in good {
        let (status, e) = post(&load, &json!({"lora_name": name, "lora_path": path})).await;
        assert_eq!(status, 200, "{name}: {e}");
    }
    let (_, models) = get(server.port, "/v1/models").unwrap();
    let models: Value = serde_json::from_str(&models).unwrap();
    let ids: BTreeSet<String> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !ids.contains("bad,start") && ids.contains("start.ok"),
        "{ids:?}"
    );
    for name in good {
        assert!(ids.contains(name), "{name} listed: {ids:?}");
    }

    // Every adapter in flight at once (long generations), so the label lists hold several names.
    let url = server.url("/v1/completions");
    let calls = ["start.ok", good[0], good[1], good[2]].map(|m| {
        let url = url.clone();
        tokio::spawn(async move {
            post(&url, &json!({"model": m, "prompt": [5, 6, 7], "max_tokens": 200, "ignore_eos": true, "temperature": 0})).await
        })
    });
    let mut seen = BTreeSet::new();
    while !calls.iter().all(|c| c.is_finished()) {
        let text = get(server.port, "/metrics").unwrap().1;
        for family in ["vllm:lora_requests_info", "openlora_lora_resident_info"] {
            for label in ["running_lora_adapters", "waiting_lora_adapters"] {
                let names = listed(&text, family, label);
                assert!(
                    names.is_subset(&ids),
                    "{family} {label}: {names:?} not all registered names"
                );
                seen.extend(names);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for c in calls {
        let (status, body) = c.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert!(seen.len() >= 2, "the lists named {seen:?}");
    let text = get(server.port, "/metrics").unwrap().1;
    let problems = promtool_problems(&text);
    assert!(problems.is_empty(), "promtool: {problems:?}");
    let _ = std::fs::remove_dir_all(&work);
}
