//! Acceptance (issue 6): the server is killed with SIGKILL after a settlement batch landed on
//! chain but before the ledger recorded it (test hook `OPENLORA_TEST_PAUSE_AFTER_SUBMIT=1` parks
//! the worker right there), then restarted on the same ledger: no record is lost, the landed batch
//! is recognised on chain (not resubmitted), and the chain's debits/credits equal the ledger's sums.

mod metering_common;
use metering_common::*;
use openlora::ledger::Store;
use std::time::Duration;

async fn calls(
    http: &reqwest::Client,
    server: &Server,
    range: std::ops::Range<usize>,
) -> Vec<(usize, String)> {
    let mut ids = vec![];
    for i in range {
        ids.extend(two_payer_call(http, &server.url(""), i).await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_submit_and_record_loses_nothing_and_charges_once() {
    let work = fresh_dir("crash");
    write_adapters(&work.join("adapters"));
    write_datanets(&work.join("datanets"), &[5, 6, 7, 8, 9]);
    let deposits = [1_000_000_000_000_000_000u128; 2];
    let chain = Chain::start(None, &deposits).await;
    let mut setup = ServerSetup {
        work: work.clone(),
        rpc: chain.url(),
        settlement: chain.deployment.settlement,
        payers: 2,
        max_records: 10,
        pause_after_submit: true,
        extra_keys: vec![],
    };
    let http = reqwest::Client::new();
    let server = setup.spawn();
    let mut ids = calls(&http, &server, 0..25).await;
    server.wait_for("pausing before recording", Duration::from_secs(60));
    {
        let store = Store::open(&setup.ledger()).unwrap();
        let pending = store.pending_batches().unwrap();
        assert_eq!(pending.len(), 1, "one batch written before submission");
        assert!(
            chain.admin.batch_settled(pending[0].id.0).await.unwrap(),
            "and it landed"
        );
    }
    server.kill9();

    setup.pause_after_submit = false;
    let server = setup.spawn();
    ids.extend(calls(&http, &server, 25..35).await);
    let store = wait_settled(&setup.ledger(), Duration::from_secs(120));
    let recorded = billed_ids(&store);
    for (_, id) in &ids {
        assert!(recorded.contains(id), "record {id} lost");
    }
    assert_eq!(recorded.len(), ids.len());
    check_books(&chain, &store, &deposits).await;
    for (p, id) in &ids {
        check_receipt(&http, &server.url(""), &api_key(*p), id, &chain).await;
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}
