//! Unsettleable usage gets a defined end, with real anvil and the real `openlora serve` binary.
//! Two payers withdraw everything before their calls settle, so their records are isolated as
//! unsettleable (`insufficient_escrow`):
//! - one deposits again within `--write-off-after-secs`: its records are retried and settle from
//!   the new deposit (receipts `settled`);
//! - the other does not: its records are `written_off` once the grace period has passed, released
//!   from its debt (a new deposit of exactly the written-off amount then admits a call that needs
//!   it), and never settle, even after that deposit;
//! - `openlora_unsettleable_outcomes_total{outcome}` counts each outcome; afterwards the chain's
//!   balances equal the ledger's for every payer.

mod metering_common;
use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use metering_common::*;
use openlora::chain::anvil::DEV_KEYS;
use openlora::chain::{Settler, NATIVE};
use openlora::ledger::Store;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const DEPOSIT: u64 = 1_000_000_000_000_000;

async fn anvil_rpc(chain: &Chain, method: &'static str, params: Value) {
    let _: Value = chain
        .admin
        .provider()
        .raw_request(method.into(), params)
        .await
        .unwrap();
}

/// A call of `key` that generates exactly `max_tokens` (so its cost is its worst case); returns
/// (status, body).
async fn call(http: &reqwest::Client, url: &str, key: &str, i: usize) -> (u16, Value) {
    let body = json!({"model": ADAPTERS[i % 5], "prompt": prompt_for(i), "max_tokens": 3,
                      "ignore_eos": true, "temperature": 0});
    let (status, text) = post_completion(http, url, key, &body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn ok_call(http: &reqwest::Client, url: &str, key: &str, i: usize) -> String {
    let (status, body) = call(http, url, key, i).await;
    assert_eq!(status, 200, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// Polls until every receipt of `ids` has `status`.
async fn wait_status(http: &reqwest::Client, url: &str, key: &str, ids: &[String], status: &str) {
    let start = Instant::now();
    for id in ids {
        loop {
            let r = receipt_json(http, url, key, id).await;
            if r["status"] == status {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{id} never became {status}: {r}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

async fn withdraw_all(chain: &Chain, who: &Settler) {
    let s = who.settlement();
    let r = s
        .requestWithdrawal(NATIVE, U256::from(DEPOSIT))
        .send()
        .await;
    r.unwrap().get_receipt().await.unwrap();
    anvil_rpc(chain, "evm_increaseTime", json!([61])).await;
    anvil_rpc(chain, "evm_mine", json!([])).await;
    let r = s.executeWithdrawal(NATIVE).send().await;
    r.unwrap().get_receipt().await.unwrap();
}

fn amounts(store: &Store, ids: &[String]) -> U256 {
    ids.iter()
        .map(|id| store.get(id).unwrap().unwrap().amount)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettleable_records_are_retried_or_written_off_never_both() {
    let work = prepared_dir("write-off", &[5, 6, 7, 8, 9]);
    let deposits = [1_000_000_000_000_000_000u128];
    let chain = Chain::start_with_delay(None, &deposits, 60).await;
    let (k1, k2) = (DEV_KEYS[3], DEV_KEYS[4]);
    let l1 = Settler::connect(&chain.url(), k1, chain.deployment)
        .await
        .unwrap();
    let l2 = Settler::connect(&chain.url(), k2, chain.deployment)
        .await
        .unwrap();
    for l in [&l1, &l2] {
        l.deposit(U256::from(DEPOSIT)).await.unwrap();
    }
    let mut setup = ServerSetup::for_chain(&work, &chain, 1, 100);
    setup.extra_keys = vec![("sk-l1".into(), addr(k1)), ("sk-l2".into(), addr(k2))];
    let server = setup.spawn_with(&[
        "--settle-interval-secs".into(),
        "6".into(),
        "--write-off-after-secs".into(),
        "8".into(),
    ]);
    let (http, url) = (reqwest::Client::new(), server.url(""));
    let (mut ids1, mut ids2, mut others) = (vec![], vec![], vec![]);
    for i in 0..2 {
        ids1.push(ok_call(&http, &url, "sk-l1", i).await);
        ids2.push(ok_call(&http, &url, "sk-l2", 10 + i).await);
        others.push(ok_call(&http, &url, "sk-payer-0", 20 + i).await);
    }
    // Both withdraw everything before the batch holding their calls settles.
    withdraw_all(&chain, &l1).await;
    withdraw_all(&chain, &l2).await;
    wait_status(&http, &url, "sk-l1", &ids1, "unsettleable").await;
    wait_status(&http, &url, "sk-l2", &ids2, "unsettleable").await;

    // L1's cause goes: a new deposit. Its records are retried and settle; L2's are written off.
    let redeposit = U256::from(DEPOSIT);
    l1.deposit(redeposit).await.unwrap();
    wait_status(&http, &url, "sk-l1", &ids1, "settled").await;
    wait_status(&http, &url, "sk-l2", &ids2, "written_off").await;
    for id in &ids1 {
        check_receipt(&http, &url, "sk-l1", id, &chain).await;
    }
    let m = metrics_text(&http, &url).await;
    let outcome = |o: &str| {
        metric_value(
            &m,
            &format!("openlora_unsettleable_outcomes_total{{outcome=\"{o}\"}}"),
        )
    };
    assert_eq!(outcome("retried"), 2.0, "{m}");
    assert_eq!(outcome("written_off"), 2.0, "{m}");

    // The write-off released L2's debt: a deposit of exactly the written-off amount admits a call
    // costing half of it (with the debt still counted, nothing would be available: 402).
    let written_off = amounts(&Store::open(&setup.ledger()).unwrap(), &ids2);
    l2.deposit(written_off).await.unwrap();
    let start = Instant::now();
    let new2 = loop {
        let (status, body) = call(&http, &url, "sk-l2", 10).await;
        if status == 200 {
            break body["id"].as_str().unwrap().to_string();
        }
        assert_eq!(status, 402, "{body}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not admitted after the write-off: {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let store = wait_settled(&setup.ledger(), Duration::from_secs(60));
    wait_status(&http, &url, "sk-l2", &ids2, "written_off").await;
    check_receipt(&http, &url, "sk-l2", &new2, &chain).await;

    // Books: payer 0 and the batches (written-off records in none), then L1 and L2 on chain.
    check_books(&chain, &store, &deposits).await;
    let escrow = |a: Address| {
        let admin = &chain.admin;
        async move { admin.balances(a).await.unwrap().escrow }
    };
    assert_eq!(
        escrow(addr(k1)).await,
        redeposit - amounts(&store, &ids1),
        "L1 paid its retried records"
    );
    assert_eq!(
        escrow(addr(k2)).await,
        written_off - amounts(&store, &[new2]),
        "L2 paid its new call only"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}
