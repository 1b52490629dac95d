//! Acceptance (issue 16): the chain as the source of truth, with real anvil and the real
//! `openlora serve` binary.
//! - adapters are served only with files that hash to their on-chain `weightsHash` (refused at
//!   registration and at page-in, nothing billed), stop within the refresh interval once
//!   deactivated, and are priced from `AdapterRegistry` (a price change applies to calls admitted
//!   afterwards; every record's amount is the chain's own `quote`; the books reconcile);
//! - a datanet whose records differ from its on-chain root is excluded from attribution;
//! - a payer that withdraws between admission and settlement is isolated as unsettleable while
//!   every other record settles;
//! - after a restart with the RPC down, known payers are served within the staleness bound and
//!   unknown ones get a clear 503.

mod metering_common;
use alloy::primitives::{keccak256, Address, B256, U256};
use alloy::providers::Provider;
use alloy::sol_types::SolValue;
use metering_common::*;
use openlora::chain::anvil::{find_anvil, DEV_KEYS};
use openlora::chain::contracts::AdapterRegistry::{DatanetWeight, FeeSplit};
use openlora::chain::{Settler, NATIVE};
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

fn setup(work: &Path, chain: &Chain, payers: usize, max_records: usize) -> ServerSetup {
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

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0)
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
    let setup = setup(&work, &chain, 1, 100);
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
        metric(
            &m,
            "openlora_adapter_refusals_total{reason=\"hash_mismatch\"}"
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric(&m, "openlora_adapter_refusals_total{reason=\"inactive\"}") >= 1.0,
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
    let setup = setup(&work, &chain, 1, 100);
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
        metric(
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

async fn anvil_rpc(chain: &Chain, method: &'static str, params: Value) {
    let _: Value = chain
        .admin
        .provider()
        .raw_request(method.into(), params)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payer_that_withdrew_is_isolated_and_every_other_record_settles() {
    let work = prepared_dir("truth-withdraw", &[5, 6, 7, 8, 9]);
    let deposits = [1_000_000_000_000_000_000u128];
    let chain = Chain::start_with_delay(None, &deposits, 60).await;
    let key = DEV_KEYS[3];
    let leaving = Settler::connect(&chain.url(), key, chain.deployment)
        .await
        .unwrap();
    let deposit = U256::from(1_000_000_000_000_000u64);
    leaving.deposit(deposit).await.unwrap();
    let mut setup = setup(&work, &chain, 1, 100);
    setup.extra_keys = vec![("sk-leaving".into(), addr(key))];
    let server = setup.spawn_with(&["--settle-interval-secs".into(), "12".into()]);
    let (http, url) = (reqwest::Client::new(), server.url(""));
    let call = |k: &'static str, i: usize| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let (status, body) =
                complete(&http, &url, k, ADAPTERS[i % 5], &prompt_for(i), 3, false).await;
            assert_eq!(status, 200, "{body}");
            body["id"].as_str().unwrap().to_string()
        }
    };
    let (mut isolated, mut others) = (vec![], vec![]);
    for i in 0..3 {
        isolated.push(call("sk-leaving", i).await);
        others.push(call("sk-payer-0", 10 + i).await);
    }
    // The payer withdraws everything before the batch holding its calls settles.
    let s = leaving.settlement();
    s.requestWithdrawal(NATIVE, deposit)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    anvil_rpc(&chain, "evm_increaseTime", json!([61])).await;
    anvil_rpc(&chain, "evm_mine", json!([])).await;
    s.executeWithdrawal(NATIVE)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert_eq!(
        leaving.balances(addr(key)).await.unwrap().escrow,
        U256::ZERO
    );
    let store = wait_settled(&setup.ledger(), Duration::from_secs(60));
    // Later batches proceed.
    for i in 0..3 {
        others.push(call("sk-payer-0", 20 + i).await);
    }
    let store2 = wait_settled(&setup.ledger(), Duration::from_secs(60));
    drop(store);
    let bad: Vec<String> = store2
        .unsettleable()
        .unwrap()
        .into_iter()
        .map(|u| u.0)
        .collect();
    assert_eq!(
        bad, isolated,
        "exactly the withdrawn payer's records are unsettleable"
    );
    for id in &isolated {
        let r = receipt_json(&http, &url, "sk-leaving", id).await;
        assert_eq!(r["status"], "unsettleable", "{r}");
        assert!(
            r["unsettleable_reason"]
                .as_str()
                .unwrap()
                .starts_with("insufficient_escrow"),
            "{r}"
        );
    }
    for id in &others {
        check_receipt(&http, &url, &api_key(0), id, &chain).await;
    }
    let m = metrics_text(&http, &url).await;
    assert!(
        metric(
            &m,
            "openlora_settlement_failures_total{reason=\"insufficient_escrow\"}"
        ) >= 3.0,
        "{m}"
    );
    check_books(&chain, &store2, &deposits).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_the_rpc_down_serves_known_payers_within_the_staleness_bound() {
    let work = prepared_dir("truth-restart", &[5, 6, 7, 8, 9]);
    let deposits = [1_000_000_000_000_000_000u128];
    let mut chain = Chain::start(Some(work.join("anvil-state.json")), &deposits).await;
    let mut setup = setup(&work, &chain, 1, 5);
    let server = setup.spawn();
    let (http, url) = (reqwest::Client::new(), server.url(""));
    assert_eq!(
        complete(&http, &url, &api_key(0), "a4", &prompt_for(1), 3, false)
            .await
            .0,
        200
    );
    wait_settled(&setup.ledger(), Duration::from_secs(60));
    server.kill9();
    chain.stop();

    let stale = 25u64;
    let read_at = Store::open(&setup.ledger())
        .unwrap()
        .escrows_with_time()
        .unwrap()[&payer(0)]
        .1;
    setup.extra_keys = vec![("sk-new".into(), Address::repeat_byte(0x77))];
    let server = setup.spawn_with(&["--deposit-max-staleness-secs".into(), stale.to_string()]);
    let url = server.url("");
    let (status, body) = complete(&http, &url, &api_key(0), "a8", &prompt_for(2), 3, false).await;
    assert_eq!(
        status, 200,
        "a known payer is served while the chain is down: {body}"
    );
    let (status, body) = complete(&http, &url, "sk-new", "a8", &prompt_for(3), 3, false).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not known yet"),
        "{body}"
    );
    let now = openlora::clock::unix_now();
    tokio::time::sleep(Duration::from_secs(
        (read_at + stale + 1).saturating_sub(now),
    ))
    .await;
    let (status, body) = complete(&http, &url, &api_key(0), "a8", &prompt_for(4), 3, false).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deposit-max-staleness-secs"),
        "{body}"
    );

    // The chain comes back: deposits are read again (once the worker's backoff ends) and
    // everything settles.
    chain.restart();
    let back = std::time::Instant::now();
    loop {
        let (status, body) =
            complete(&http, &url, &api_key(0), "a8", &prompt_for(5), 3, false).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            back.elapsed() < Duration::from_secs(45),
            "deposits not re-read: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let store = wait_settled(&setup.ledger(), Duration::from_secs(90));
    check_books(&chain, &store, &deposits).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}
