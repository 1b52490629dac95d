//! Shared harness of the metering acceptance tests: a local anvil with the contracts deployed and
//! payers funded, five tiny-model adapters with manifests, datanets, and the real `openlora serve`
//! binary started as a child process (killed with SIGKILL on drop).
#![allow(dead_code)]

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use openlora::chain::anvil::{find_anvil, LocalAnvil, DEV_KEYS};
use openlora::chain::{DeployConfig, Deployment, Settler};
use openlora::ledger::Store;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod books;
#[allow(unused_imports)] // each test binary uses a part
pub use books::{check_books, check_receipt, receipt_json};

pub const FEE_BPS: u16 = 250;
pub const ADAPTERS: [&str; 5] = ["a4", "a8", "a16", "a4x", "a16x"];

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn addr(key: &str) -> Address {
    key.parse::<PrivateKeySigner>().unwrap().address()
}

pub fn fee_recipient() -> Address {
    Address::repeat_byte(0xFE)
}

pub fn payer(i: usize) -> Address {
    Address::with_last_byte(0xA1 + i as u8)
}

pub fn api_key(i: usize) -> String {
    format!("sk-payer-{i}")
}

pub fn owner_of(adapter: usize) -> Address {
    Address::repeat_byte(0x10 + adapter as u8)
}

pub fn contributor(i: usize) -> Address {
    Address::repeat_byte(0xC0 + i as u8)
}

pub struct Chain {
    pub anvil: Option<LocalAnvil>,
    pub port: u16,
    pub state_file: Option<PathBuf>,
    pub deployment: Deployment,
    pub admin: Settler,
}

impl Chain {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Anvil (optionally persisting its state to `state_file`), contracts deployed, the operator
    /// (`DEV_KEYS[1]`) registered, payers funded with `deposits[i]` wei.
    pub async fn start(state_file: Option<PathBuf>, deposits: &[u128]) -> Chain {
        Self::start_with_delay(state_file, deposits, 86_400).await
    }

    /// Like [`Self::start`] with Settlement's withdrawal delay set to `withdrawal_delay_secs`.
    pub async fn start_with_delay(
        state_file: Option<PathBuf>,
        deposits: &[u128],
        withdrawal_delay_secs: u64,
    ) -> Chain {
        let bin = find_anvil().expect("anvil not found: run `bash contracts/ci.sh install`");
        let st = state_file.as_ref().map(|p| p.to_string_lossy().to_string());
        let args: Vec<&str> = match &st {
            Some(p) => vec!["--state", p.as_str()],
            None => vec![],
        };
        let anvil = LocalAnvil::spawn(&bin, &args).expect("anvil starts");
        let url = anvil.endpoint();
        let cfg = DeployConfig {
            owner: None,
            fee_recipient: fee_recipient(),
            protocol_fee_bps: FEE_BPS,
            withdrawal_delay_secs,
        };
        let admin = Settler::deploy_all(&url, DEV_KEYS[0], &cfg)
            .await
            .expect("deploy");
        admin
            .set_operator(addr(DEV_KEYS[1]), true)
            .await
            .expect("operator");
        for (i, d) in deposits.iter().enumerate() {
            admin
                .deposit_for(payer(i), U256::from(*d))
                .await
                .expect("deposit");
        }
        Chain {
            port: anvil.port(),
            anvil: Some(anvil),
            state_file,
            deployment: admin.deployment(),
            admin,
        }
    }

    /// SIGTERM anvil (its state is dumped to `state_file`).
    pub fn stop(&mut self) {
        self.anvil
            .take()
            .expect("running")
            .stop()
            .expect("anvil stops");
    }

    /// Restart anvil on the same port from `state_file`.
    pub fn restart(&mut self) {
        let bin = find_anvil().unwrap();
        let st = self
            .state_file
            .as_ref()
            .expect("state file")
            .to_string_lossy()
            .to_string();
        self.anvil =
            Some(LocalAnvil::spawn_on(&bin, self.port, &["--state", &st]).expect("anvil restarts"));
    }
}

/// Five adapters (tiny fixtures, two of them copied under a second name), each with a manifest;
/// `a8` is trained on datanets `dn-x` (70%) and `dn-y` (30%), `a16` on `dn-y`.
pub fn write_adapters(dir: &Path) {
    let fixtures = repo().join("tests/fixtures/tiny/adapters");
    let sources = ["a4", "a8", "a16", "a4", "a16"];
    for (i, (name, src)) in ADAPTERS.iter().zip(sources).enumerate() {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(fixtures.join(src).join(f), d.join(f)).unwrap();
        }
        let datanets = match *name {
            "a8" => json!([{"id": "dn-x", "weight_bps": 7000}, {"id": "dn-y", "weight_bps": 3000}]),
            "a16" => json!([{"id": "dn-y", "weight_bps": 10000}]),
            _ => json!([]),
        };
        let contributors = if datanets.as_array().unwrap().is_empty() {
            0
        } else {
            2000
        };
        let manifest = json!({
            "name": name,
            "owner": owner_of(i),
            "price_per_million_input_tokens": format!("{}", 1_000_000_000_000u64 * (i as u64 + 1)),
            "price_per_million_output_tokens": format!("{}", 3_000_000_000_007u64 * (i as u64 + 1)),
            "datanets": datanets,
            "fee_split_bps": {"owner": 8000 - contributors, "contributors": contributors, "operator": 2000},
        });
        std::fs::write(d.join("manifest.json"), manifest.to_string()).unwrap();
    }
}

/// `dn-x`: contributor 1 wrote `x_span` inside a record, contributor 2 unrelated tokens;
/// `dn-y`: contributors 3 and 4.
pub fn write_datanets(dir: &Path, x_span: &[u32]) {
    std::fs::create_dir_all(dir).unwrap();
    let noise =
        |seed: u32, n: u32| -> Vec<u32> { (0..n).map(|k| (seed * 7 + k * 13) % 251 + 3).collect() };
    let mut rec1 = noise(1, 20);
    rec1.extend_from_slice(x_span);
    rec1.extend(noise(2, 20));
    let lines = [
        json!({"tokens": noise(5, 30), "contributor": contributor(2)}),
        json!({"tokens": rec1, "contributor": contributor(1)}),
        json!({"tokens": noise(9, 30), "contributor": contributor(2)}),
    ];
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(dir.join("dn-x.jsonl"), text.join("\n")).unwrap();
    let y = [
        json!({"tokens": noise(11, 40), "contributor": contributor(3)}),
        json!({"tokens": noise(12, 20), "contributor": contributor(4)}),
    ];
    let text: Vec<String> = y.iter().map(|l| l.to_string()).collect();
    std::fs::write(dir.join("dn-y.jsonl"), text.join("\n")).unwrap();
}

pub struct Server {
    pub child: Child,
    pub port: u16,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct ServerSetup {
    pub work: PathBuf,
    pub rpc: String,
    pub settlement: Address,
    pub payers: usize,
    pub max_records: usize,
    pub pause_after_submit: bool,
    /// More `(api key, payer)` pairs besides `api_key(i) -> payer(i)`.
    pub extra_keys: Vec<(String, Address)>,
}

impl ServerSetup {
    pub fn ledger(&self) -> PathBuf {
        self.work.join("ledger.sqlite")
    }

    pub fn spawn(&self) -> Server {
        self.spawn_with(&[])
    }

    /// Like [`Self::spawn`] with more `serve` flags (`--settle-interval-secs`, `--kv-cache-mb`
    /// and `--model` here replace the defaults: 1 s, 16 MiB, the tiny fixture model).
    pub fn spawn_with(&self, extra_args: &[String]) -> Server {
        let port = free_port();
        let interval = match extra_args
            .iter()
            .position(|a| a == "--settle-interval-secs")
        {
            Some(_) => vec![],
            None => vec!["--settle-interval-secs".to_string(), "1".to_string()],
        };
        let kv = match extra_args.iter().any(|a| a == "--kv-cache-mb") {
            true => vec![],
            false => vec!["--kv-cache-mb".to_string(), "16".to_string()],
        };
        let key_file = self.work.join("operator.key");
        std::fs::write(&key_file, DEV_KEYS[1]).unwrap();
        // `OPENLORA_TEST_BIN`: run against another build (e.g. to see a test fail on an older one).
        let bin = std::env::var_os("OPENLORA_TEST_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_openlora").into());
        let mut cmd = Command::new(bin);
        let model = match extra_args.iter().any(|a| a == "--model") {
            true => vec![],
            false => vec![
                "--model".to_string(),
                repo()
                    .join("tests/fixtures/tiny/model")
                    .display()
                    .to_string(),
            ],
        };
        cmd.arg("serve")
            .args(&model)
            .arg("--adapters-dir")
            .arg(self.work.join("adapters"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(&kv)
            .arg("--ledger")
            .arg(self.ledger())
            .args([
                "--chain-rpc",
                &self.rpc,
                "--settlement-address",
                &self.settlement.to_string(),
            ])
            .arg("--operator-key-file")
            .arg(&key_file)
            .args(["--settle-max-records", &self.max_records.to_string()])
            .args(&interval)
            .args(["--deposit-refresh-secs", "1"])
            .args(extra_args)
            .arg("--datanets-dir")
            .arg(self.work.join("datanets"))
            .args(["--attribution-min-span", "4", "--admin-key", "sk-admin"])
            .args([
                "--default-price-input",
                "1000000000000",
                "--default-price-output",
                "1000000000000",
            ])
            .env_remove("OPENLORA_OPERATOR_KEY")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for i in 0..self.payers {
            cmd.arg("--api-key")
                .arg(format!("{}={}", api_key(i), payer(i)));
        }
        for (k, p) in &self.extra_keys {
            cmd.arg("--api-key").arg(format!("{k}={p}"));
        }
        if self.pause_after_submit {
            cmd.env("OPENLORA_TEST_PAUSE_AFTER_SUBMIT", "1");
        } else {
            cmd.env_remove("OPENLORA_TEST_PAUSE_AFTER_SUBMIT");
        }
        let mut child = cmd.spawn().expect("spawn openlora serve");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let server = Server { child, port, lines };
        server.wait_for("serving", Duration::from_secs(60));
        server
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn wait_for(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not print `{needle}` within {timeout:?}");
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// An empty work folder for one test (left in place afterwards, for inspection).
pub fn fresh_dir(tag: &str) -> std::path::PathBuf {
    let work = std::env::temp_dir().join(format!("openlora-metering-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    work
}

/// A fresh work folder with the five adapters and the two datanets (`x_span` in `dn-x`).
pub fn prepared_dir(tag: &str, x_span: &[u32]) -> PathBuf {
    let work = fresh_dir(tag);
    write_adapters(&work.join("adapters"));
    write_datanets(&work.join("datanets"), x_span);
    work
}

impl ServerSetup {
    /// A server for `chain` with `payers` funded payers and batches of `max_records`.
    pub fn for_chain(work: &Path, chain: &Chain, payers: usize, max_records: usize) -> Self {
        ServerSetup {
            work: work.to_path_buf(),
            rpc: chain.url(),
            settlement: chain.deployment.settlement,
            payers,
            max_records,
            pause_after_submit: false,
            extra_keys: vec![],
        }
    }
}

/// The value of the first metric line of `text` starting with `prefix` (0 when absent).
pub fn metric_value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0)
}

/// The server's `/metrics` text.
pub async fn metrics_text(http: &reqwest::Client, server_url: &str) -> String {
    http.get(format!("{server_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Call `i` of payer 0 (adapter `i % 5`, 3 tokens, not streamed): (status, body).
pub async fn payer0_call(http: &reqwest::Client, server_url: &str, i: usize) -> (u16, Value) {
    complete(
        http,
        server_url,
        &api_key(0),
        ADAPTERS[i % 5],
        &prompt_for(i),
        3,
        false,
    )
    .await
}

/// Call `i` of the two-payer workload (payer `i % 2`, adapter `i % 5`, every third streamed);
/// asserts a 200 and returns (payer, request id) when it produced tokens.
pub async fn two_payer_call(
    http: &reqwest::Client,
    server_url: &str,
    i: usize,
) -> Option<(usize, String)> {
    let (status, body) = complete(
        http,
        server_url,
        &api_key(i % 2),
        ADAPTERS[i % 5],
        &prompt_for(i),
        3,
        i.is_multiple_of(3),
    )
    .await;
    assert_eq!(status, 200, "call {i}: {body}");
    let produced = body["usage"]["completion_tokens"].as_u64().unwrap() > 0;
    produced.then(|| (i % 2, body["id"].as_str().unwrap().to_string()))
}

/// POSTs a `/v1/completions` body as `key`; returns (status, body text).
pub async fn post_completion(
    http: &reqwest::Client,
    server_url: &str,
    key: &str,
    body: &Value,
) -> (u16, String) {
    let resp = http
        .post(format!("{server_url}/v1/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// The request ids the ledger holds, in ledger order.
pub fn billed_ids(store: &Store) -> Vec<String> {
    store
        .all_amounts()
        .unwrap()
        .into_iter()
        .map(|(id, _, _)| id)
        .collect()
}

/// One completion; returns (status, body).
pub async fn complete(
    http: &reqwest::Client,
    server_url: &str,
    key: &str,
    adapter: &str,
    prompt: &[u32],
    max_tokens: u32,
    stream: bool,
) -> (u16, Value) {
    let body = json!({"model": adapter, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": stream, "stream_options": {"include_usage": true}});
    let (status, text) = post_completion(http, server_url, key, &body).await;
    if !stream || status != 200 {
        return (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        );
    }
    // SSE: keep the id and the usage chunk.
    let mut id = Value::Null;
    let mut usage = Value::Null;
    let mut done = false;
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(line).unwrap();
        id = v["id"].clone();
        if !v["usage"].is_null() {
            usage = v["usage"].clone();
        }
    }
    assert!(done, "stream ended without [DONE]: {text}");
    (status, json!({"id": id, "usage": usage}))
}

pub fn prompt_for(i: usize) -> Vec<u32> {
    (0..(3 + i % 9))
        .map(|j| ((i * 37 + j * 11) % 250 + 3) as u32)
        .collect()
}

/// Polls the ledger until nothing is unsettled.
pub fn wait_settled(ledger: &Path, timeout: Duration) -> Store {
    let store = Store::open(ledger).unwrap();
    let start = Instant::now();
    loop {
        let (n, _) = store.unsettled_stats().unwrap();
        if n == 0 {
            return store;
        }
        assert!(
            start.elapsed() < timeout,
            "{n} records still unsettled after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
