//! Acceptance (issue 16): the registries as the source of truth, with real anvil and the real
//! `openlora serve` binary.
//! - adapters are served only with files that hash to their on-chain `weightsHash` (refused at
//!   registration and at page-in, nothing billed), stop within the refresh interval once
//!   deactivated, and are priced from `AdapterRegistry` (a price change applies to calls admitted
//!   afterwards; every record's amount is the chain's own `quote`; the books reconcile);
//!   `--require-onchain-adapters` refuses adapters without a registration;
//! - a datanet whose records differ from its on-chain root is excluded from attribution, an
//!   intact one attributes as before, and a corrected root brings it back.

mod metering_common;
use alloy::primitives::{keccak256, Address, B256, U256};
use alloy::sol_types::SolValue;
use metering_common::*;
use openlora::chain::anvil::find_anvil;
use openlora::chain::contracts::AdapterRegistry::{DatanetWeight, FeeSplit};
use openlora::ledger::Store;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const REFRESH: &str = "1";

fn registry_args(chain: &Chain) -> Vec<String> {
    vec![
        "--adapter-registry-address".into(),
        chain.deployment.adapter_registry.to_string(),
        "--chain-refresh-secs".into(),
        REFRESH.into(),
    ]
}

/// `cast` next to the anvil the tests use (or `$OPENLORA_CAST`).
fn cast() -> PathBuf {
    if let Some(p) = std::env::var_os("OPENLORA_CAST") {
        return p.into();
    }
    let anvil = find_anvil().expect("anvil");
    anvil
        .parent()
        .unwrap()
        .join("../../cast-linux-amd64/bin/cast")
}

/// The weights hash as an independent tool computes it: `cast keccak` of the file's bytes (as
/// 0x-hex on stdin).
fn cast_keccak_of(file: &Path) -> B256 {
    use std::io::Write;
    let hex: String = std::fs::read(file)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut child = std::process::Command::new(cast())
        .arg("keccak")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("cast runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("0x{hex}").as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn weights(work: &Path, adapter: &str) -> PathBuf {
    work.join("adapters")
        .join(adapter)
        .join("adapter_model.safetensors")
}

async fn register(chain: &Chain, name: &str, hash: B256, price: (u128, u128), on: &[(&str, u16)]) {
    let contributors = if on.is_empty() { 0 } else { 2000 };
    let trained: Vec<DatanetWeight> = on
        .iter()
        .map(|(d, w)| DatanetWeight {
            datanetId: keccak256(d.as_bytes()),
            weightBps: *w,
        })
        .collect();
    let split = FeeSplit {
        ownerBps: 7000 - contributors,
        contributorsBps: contributors,
        operatorBps: 3000,
    };
    let reg = chain.admin.adapter_registry();
    let call = reg.register(
        keccak256(name.as_bytes()),
        hash,
        price.0,
        price.1,
        trained,
        split,
    );
    let r = call.send().await.unwrap().get_receipt().await.unwrap();
    assert!(r.status(), "register {name}");
}

async fn quote(chain: &Chain, name: &str, input: u64, output: u64) -> U256 {
    let reg = chain.admin.adapter_registry();
    reg.quote(
        keccak256(name.as_bytes()),
        U256::from(input),
        U256::from(output),
    )
    .call()
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_are_served_and_priced_only_as_registered_on_chain() {
    let work = prepared_dir("truth-adapters", &[5, 6, 7, 8, 9]);
    let deposits = [1_000_000_000_000_000_000u128];
    let chain = Chain::start(None, &deposits).await;
    let (a4, a16) = (
        cast_keccak_of(&weights(&work, "a4")),
        cast_keccak_of(&weights(&work, "a16")),
    );
    register(
        &chain,
        "a4",
        a4,
        (2_000_000_000_000, 5_000_000_000_003),
        &[],
    )
    .await;
    register(&chain, "a8", a16, (1, 1), &[]).await; // not a8's weights
    register(
        &chain,
        "a16",
        a16,
        (3_000_000_000_000, 3_000_000_000_000),
        &[],
    )
    .await;
    let setup = ServerSetup::for_chain(&work, &chain, 1, 100);
    let server = setup.spawn_with(&registry_args(&chain));
    let (http, url) = (reqwest::Client::new(), server.url(""));
    let key = api_key(0);
    let call = |m: &'static str, i: usize| {
        let (http, url, key) = (http.clone(), url.clone(), key.clone());
        async move { complete(&http, &url, &key, m, &prompt_for(i), 4, i % 2 == 1).await }
    };
    let mut billed = vec![];

    // Matching files serve, at the on-chain price (the chain's own `quote`), paid to the on-chain owner.
    let (status, body) = call("a4", 0).await;
    assert_eq!(status, 200, "{body}");
    billed.push(body["id"].as_str().unwrap().to_string());
    let store = Store::open(&setup.ledger()).unwrap();
    let r = store.get(&billed[0]).unwrap().unwrap();
    let old_quote = quote(&chain, "a4", r.prompt_tokens, r.completion_tokens).await;
    assert_eq!(r.amount, old_quote, "billed at AdapterRegistry.quote");
    assert_eq!(
        r.adapters[0]["price_per_million_input_tokens"],
        "2000000000000"
    );
    let owner = chain.admin.signer_address();
    assert!(
        r.splits.iter().any(|(a, _)| *a == owner),
        "the on-chain owner is paid: {:?}",
        r.splits
    );
    assert!(
        !r.splits.iter().any(|(a, _)| *a == owner_of(0)),
        "not the manifest's owner"
    );

    // a8's files do not hash to its registration: refused at startup and at runtime registration.
    assert_eq!(call("a8", 1).await.0, 404);
    server.wait_for("skipping adapter a8", Duration::from_secs(5));
    let load = http
        .post(server.url("/v1/load_lora_adapter"))
        .bearer_auth("sk-admin")
        .json(&json!({"lora_name": "a8", "lora_path": work.join("adapters/a8")}))
        .send()
        .await
        .unwrap();
    assert_eq!(load.status().as_u16(), 403);
    let e: Value = load.json().await.unwrap();
    assert_eq!(e["error"]["code"], "adapter_refused", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("weightsHash"),
        "{e}"
    );
    assert!(
        !e.to_string().contains(work.to_str().unwrap()),
        "no server path: {e}"
    );

    // One byte of a16's weights changed after registration: refused at page-in.
    let f = weights(&work, "a16");
    let mut bytes = std::fs::read(&f).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&f, &bytes).unwrap();
    let (status, body) = call("a16", 2).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "adapter_refused", "{body}");

    // An adapter without a registration serves at the default price (no --require-onchain-adapters).
    let (status, body) = call("a4x", 3).await;
    assert_eq!(status, 200, "{body}");
    billed.push(body["id"].as_str().unwrap().to_string());
    let r = store.get(&billed[1]).unwrap().unwrap();
    let default =
        U256::from(r.prompt_tokens + r.completion_tokens) * U256::from(1_000_000_000_000u64);
    assert_eq!(r.amount, default.div_ceil(U256::from(1_000_000u64)));

    // The adapter listing shows what the gate said at each one's last page-in.
    let listed: Value = http
        .get(server.url("/v1/adapters"))
        .bearer_auth("sk-admin")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = |name: &str| {
        let a = listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == name);
        a.unwrap_or_else(|| panic!("{name} listed: {listed}"))
            .clone()
    };
    assert_eq!(entry("a4")["integrity"], "verified", "{listed}");
    assert_eq!(entry("a4x")["integrity"], "unregistered", "{listed}");
    let a16 = entry("a16");
    assert_eq!(a16["integrity"], "refused", "{a16}");
    assert!(
        a16["integrity_reason"]
            .as_str()
            .unwrap()
            .contains("weightsHash"),
        "{a16}"
    );
    assert_eq!(
        entry("a16x")["integrity"],
        "unchecked",
        "never paged in: {listed}"
    );

    // updatePrice: calls admitted afterwards pay the new price, the earlier one kept the old.
    let reg = chain.admin.adapter_registry();
    let id = keccak256(b"a4");
    let tx = reg.updatePrice(id, 7_000_000_000_000, 11_000_000_000_000);
    tx.send().await.unwrap().get_receipt().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for i in 4..7 {
        let (status, body) = call("a4", i).await;
        assert_eq!(status, 200, "{body}");
        let rid = body["id"].as_str().unwrap().to_string();
        let r = store.get(&rid).unwrap().unwrap();
        assert_eq!(
            r.amount,
            quote(&chain, "a4", r.prompt_tokens, r.completion_tokens).await
        );
        assert_eq!(
            r.adapters[0]["price_per_million_input_tokens"],
            "7000000000000"
        );
        billed.push(rid);
    }
    assert_eq!(store.get(&billed[0]).unwrap().unwrap().amount, old_quote);

    // Deactivation stops serving within the refresh interval.
    reg.deactivate(id)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = call("a4", 8).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deactivated"),
        "{body}"
    );

    let m = metrics_text(&http, &url).await;
    assert!(
        metric_value(
            &m,
            "openlora_adapter_refusals_total{reason=\"hash_mismatch\"}"
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric_value(&m, "openlora_adapter_refusals_total{reason=\"inactive\"}") >= 1.0,
        "{m}"
    );
    // Nothing billed for a refused call; the chain's totals equal the ledger's sums.
    let store = wait_settled(&setup.ledger(), Duration::from_secs(60));
    assert_eq!(billed_ids(&store), billed);
    check_books(&chain, &store, &deposits).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}

/// The records root of a datanet file as the README defines it, computed here independently.
fn reference_root(file: &Path) -> B256 {
    let text = std::fs::read_to_string(file).unwrap();
    let mut level: Vec<B256> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l).unwrap();
            let who: Address = v["contributor"].as_str().unwrap().parse().unwrap();
            let content = match v["tokens"].as_array() {
                Some(t) => keccak256(
                    t.iter()
                        .flat_map(|x| (x.as_u64().unwrap() as u32).to_be_bytes())
                        .collect::<Vec<u8>>(),
                ),
                None => keccak256(v["text"].as_str().unwrap().as_bytes()),
            };
            keccak256(keccak256((i as u64, who, content).abi_encode()))
        })
        .collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|p| match p {
                [a, b] => keccak256([a.min(b).as_slice(), a.max(b).as_slice()].concat()),
                [a] => *a,
                _ => unreachable!(),
            })
            .collect();
    }
    level.first().copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datanet_whose_records_differ_from_its_root_is_excluded() {
    let span = [5u32, 6, 7, 8, 9];
    let work = prepared_dir("truth-datanets", &span);
    let deposits = [1_000_000_000_000_000_000u128];
    let chain = Chain::start(None, &deposits).await;
    let (x_file, y_file) = (
        work.join("datanets/dn-x.jsonl"),
        work.join("datanets/dn-y.jsonl"),
    );
    let x_root = reference_root(&x_file);
    // The helper command prints the same root.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_openlora"))
        .arg("datanet-root")
        .arg(&x_file)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        x_root.to_string()
    );
    let y_root = reference_root(&y_file);
    let dn = chain.admin.datanet_registry();
    for (name, root) in [("dn-x", x_root), ("dn-y", keccak256(b"other records"))] {
        let c = dn.createDatanet(
            keccak256(name.as_bytes()),
            root,
            vec![contributor(1)],
            vec![U256::from(1u64)],
        );
        c.send().await.unwrap().get_receipt().await.unwrap();
    }
    let a8 = cast_keccak_of(&weights(&work, "a8"));
    register(
        &chain,
        "a8",
        a8,
        (1_000_000_000_000, 1_000_000_000_000),
        &[("dn-x", 7000), ("dn-y", 3000)],
    )
    .await;
    let setup = ServerSetup::for_chain(&work, &chain, 1, 100);
    let server = setup.spawn_with(&registry_args(&chain));
    server.wait_for("datanet excluded from attribution", Duration::from_secs(5));
    let (http, url) = (reqwest::Client::new(), server.url(""));
    let prompt: Vec<u32> = span.to_vec();
    let attribution = |body: Value| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let id = body["id"].as_str().unwrap().to_string();
            let r = receipt_json(&http, &url, &api_key(0), &id).await;
            r["attribution"].as_array().unwrap().clone()
        }
    };
    let (status, body) = complete(&http, &url, &api_key(0), "a8", &prompt, 6, false).await;
    assert_eq!(status, 200, "{body}");
    let att = attribution(body).await;
    let by = |d: &str| att.iter().find(|a| a["datanet"] == d).cloned().unwrap();
    assert_eq!(by("dn-y")["source"], "excluded:root_mismatch", "{att:?}");
    assert_eq!(by("dn-y")["contributors"], json!([]));
    assert!(
        ["spans", "static"].contains(&by("dn-x")["source"].as_str().unwrap()),
        "{att:?}"
    );
    assert!(!by("dn-x")["contributors"].as_array().unwrap().is_empty());
    let m = metrics_text(&http, &url).await;
    assert_eq!(
        metric_value(
            &m,
            "openlora_datanet_excluded{datanet=\"dn-y\",reason=\"root_mismatch\"}"
        ),
        1.0,
        "{m}"
    );
    assert!(!m.contains("datanet=\"dn-x\""), "dn-x is intact: {m}");

    // The curator publishes the right root: dn-y attributes again within the refresh interval.
    let c = dn.updateRecordsRoot(keccak256(b"dn-y"), y_root);
    c.send().await.unwrap().get_receipt().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = complete(&http, &url, &api_key(0), "a8", &prompt, 6, false).await;
    assert_eq!(status, 200, "{body}");
    let att = attribution(body).await;
    let y = att.iter().find(|a| a["datanet"] == "dn-y").unwrap();
    assert!(
        ["spans", "static"].contains(&y["source"].as_str().unwrap()),
        "{att:?}"
    );
    let store = wait_settled(&setup.ledger(), Duration::from_secs(60));
    check_books(&chain, &store, &deposits).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_onchain_adapters_refuses_adapters_without_a_registration() {
    let work = prepared_dir("truth-require", &[5, 6, 7, 8, 9]);
    let deposits = [1_000_000_000_000_000_000u128];
    let chain = Chain::start(None, &deposits).await;
    let a4 = cast_keccak_of(&weights(&work, "a4"));
    register(
        &chain,
        "a4",
        a4,
        (1_000_000_000_000, 1_000_000_000_000),
        &[],
    )
    .await;
    let setup = ServerSetup::for_chain(&work, &chain, 1, 100);
    let mut args = registry_args(&chain);
    args.push("--require-onchain-adapters".into());
    let server = setup.spawn_with(&args);
    let (http, url) = (reqwest::Client::new(), server.url(""));
    let (status, body) = complete(&http, &url, &api_key(0), "a4", &prompt_for(0), 3, false).await;
    assert_eq!(status, 200, "{body}");
    // a4x holds the same weights as a4 but has no registration of its own.
    server.wait_for("skipping adapter a4x", Duration::from_secs(5));
    let (status, _) = complete(&http, &url, &api_key(0), "a4x", &prompt_for(1), 3, false).await;
    assert_eq!(status, 404);
    let load = http
        .post(server.url("/v1/load_lora_adapter"))
        .bearer_auth("sk-admin")
        .json(&json!({"lora_name": "a4y", "lora_path": work.join("adapters/a4x")}))
        .send()
        .await
        .unwrap();
    assert_eq!(load.status().as_u16(), 403);
    let e: Value = load.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--require-onchain-adapters"),
        "{e}"
    );
    let m = metrics_text(&http, &url).await;
    assert!(
        metric_value(
            &m,
            "openlora_adapter_refusals_total{reason=\"unregistered\"}"
        ) >= 4.0,
        "a4x, a8, a16, a16x at startup and a4y at runtime: {m}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}
