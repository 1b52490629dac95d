//! Acceptance (issue 6, contracts/README.md "Withdrawal delay"): once a payer asks to withdraw
//! its escrow, the server stops spending it (402 `insufficient_quota`) while other payers are
//! served; cancelling the request makes the payer spendable again.

mod metering_common;
use alloy::primitives::U256;
use metering_common::*;
use openlora::chain::anvil::DEV_KEYS;
use openlora::chain::{Settler, NATIVE};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_withdrawal_is_not_spent() {
    let work = fresh_dir("withdraw");
    write_adapters(&work.join("adapters"));
    write_datanets(&work.join("datanets"), &[5, 6, 7, 8, 9]);
    let deposits = [1_000_000_000_000_000_000u128];
    let chain = Chain::start(None, &deposits).await;
    // A payer with its own key, so it can ask to withdraw.
    let key = DEV_KEYS[3];
    let leaving = Settler::connect(&chain.url(), key, chain.deployment)
        .await
        .unwrap();
    let deposit = U256::from(1_000_000_000_000_000u64);
    leaving.deposit(deposit).await.unwrap();
    let setup = ServerSetup {
        work: work.clone(),
        rpc: chain.url(),
        settlement: chain.deployment.settlement,
        payers: 1,
        max_records: 5,
        pause_after_submit: false,
        extra_keys: vec![("sk-leaving".into(), addr(key))],
    };
    let server = setup.spawn();
    let http = reqwest::Client::new();
    let url = server.url("");
    let call = |k: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        async move { complete(&http, &url, k, "a4", &prompt_for(1), 3, false).await }
    };
    assert_eq!(call("sk-leaving").await.0, 200);

    let s = leaving.settlement();
    s.requestWithdrawal(NATIVE, deposit - U256::from(1u64))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await; // deposits refresh every second
    let (status, body) = call("sk-leaving").await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["type"], "insufficient_quota");
    assert_eq!(call("sk-payer-0").await.0, 200, "other payers continue");

    s.cancelWithdrawal(NATIVE)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(call("sk-leaving").await.0, 200);
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}
