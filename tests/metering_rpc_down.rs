//! Acceptance (issue 6): anvil is stopped for 30 s while traffic continues. Every request is
//! still served and recorded; settlement failures are counted and retried with backoff; once
//! anvil is back (restarted on the same port from its `--state` dump) everything settles and the
//! chain's debits/credits equal the ledger's sums.

mod metering_common;
use metering_common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anvil_down_for_30s_under_traffic_then_everything_settles() {
    let work = fresh_dir("rpc");
    write_adapters(&work.join("adapters"));
    write_datanets(&work.join("datanets"), &[5, 6, 7, 8, 9]);
    let deposits = [1_000_000_000_000_000_000u128; 2];
    let mut chain = Chain::start(Some(work.join("anvil-state.json")), &deposits).await;
    let setup = ServerSetup {
        work: work.clone(),
        rpc: chain.url(),
        settlement: chain.deployment.settlement,
        payers: 2,
        max_records: 5,
        pause_after_submit: false,
        extra_keys: vec![],
    };
    let http = reqwest::Client::new();
    let server = setup.spawn();
    let url = server.url("");
    let mut ids = vec![];
    let mut i = 0usize;
    let call = |i: usize| {
        let (http, url) = (http.clone(), url.clone());
        async move { two_payer_call(&http, &url, i).await }
    };
    for _ in 0..10 {
        ids.extend(call(i).await);
        i += 1;
    }
    wait_settled(&setup.ledger(), Duration::from_secs(60));

    chain.stop();
    let down = Instant::now();
    let mut during = 0;
    while down.elapsed() < Duration::from_secs(30) {
        ids.extend(call(i).await);
        i += 1;
        during += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        during >= 20,
        "requests kept being served while the chain was down ({during})"
    );
    let metrics = metrics_text(&http, &server.url("")).await;
    // The series exists from start-up (at 0): the count must have moved.
    let rpc_failures: f64 = metrics
        .lines()
        .find(|l| l.starts_with("openlora_settlement_failures_total{reason=\"rpc\"}"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0);
    assert!(rpc_failures > 0.0, "settlement failures are counted");
    let unsettled: f64 = metrics
        .lines()
        .find(|l| l.starts_with("openlora_ledger_unsettled_records "))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap();
    assert!(unsettled > 0.0, "records queue while the chain is down");

    chain.restart();
    for _ in 0..5 {
        ids.extend(call(i).await);
        i += 1;
    }
    let store = wait_settled(&setup.ledger(), Duration::from_secs(120));
    assert_eq!(store.all_amounts().unwrap().len(), ids.len());
    check_books(&chain, &store, &deposits).await;
    for (p, id) in &ids {
        check_receipt(&http, &url, &api_key(*p), id, &chain).await;
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}
