//! Acceptance (issue 16): settlement liveness and deposits across restarts, with real anvil and
//! the real `openlora serve` binary.
//! - a payer that withdraws between admission and settlement is isolated as unsettleable while
//!   every other record settles and later batches proceed; the books reconcile;
//! - after a restart with the RPC down, known payers are served within the staleness bound and
//!   unknown ones get a clear 503; once the chain is back everything settles;
//! - a revert about the contract, not the records (Settlement paused), marks nothing.

mod metering_common;
use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use metering_common::*;
use openlora::chain::anvil::DEV_KEYS;
use openlora::chain::{Settler, NATIVE};
use openlora::ledger::Store;
use serde_json::{json, Value};
use std::time::Duration;

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
    let mut setup = ServerSetup::for_chain(&work, &chain, 1, 100);
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
        metric_value(
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
    let mut setup = ServerSetup::for_chain(&work, &chain, 1, 5);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_contract_marks_no_record_unsettleable() {
    let work = prepared_dir("truth-pause", &[5, 6, 7, 8, 9]);
    let deposits = [1_000_000_000_000_000_000u128; 2];
    let chain = Chain::start(None, &deposits).await;
    let s = chain.admin.settlement();
    s.pause().send().await.unwrap().get_receipt().await.unwrap();
    let setup = ServerSetup::for_chain(&work, &chain, 2, 3);
    let server = setup.spawn();
    let (http, url) = (reqwest::Client::new(), server.url(""));
    let mut ids = vec![];
    for i in 0..6 {
        ids.extend(two_payer_call(&http, &url, i).await);
    }
    // Batches are due (3 records, 1 s interval) but every one reverts with EnforcedPause: a
    // contract-level revert, retried with backoff, never blamed on the records.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let m = metrics_text(&http, &url).await;
    assert!(
        metric_value(&m, "openlora_settlement_failures_total{reason=\"chain\"}") >= 1.0,
        "{m}"
    );
    let store = Store::open(&setup.ledger()).unwrap();
    assert!(store.unsettleable().unwrap().is_empty());
    s.unpause()
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let store = wait_settled(&setup.ledger(), Duration::from_secs(60));
    assert!(store.unsettleable().unwrap().is_empty());
    assert_eq!(store.all_amounts().unwrap().len(), ids.len());
    check_books(&chain, &store, &deposits).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}
