//! Admission after the chain returns, with real anvil and the real `openlora serve` binary: anvil
//! is stopped long enough for the settlement worker's backoff to reach 16 s and for the payer's
//! last deposit reading to pass `--deposit-max-staleness-secs` (calls get 503); once anvil is
//! restarted, calls are admitted again within a few seconds (the worker probes the RPC while it
//! backs off and re-reads deposits on recovery), and everything settles with the books balanced.
//! And a chain that comes back without batches the server recorded settled gets them again.

mod metering_common;
use metering_common::*;
use std::time::{Duration, Instant};

/// Seconds from anvil's restart within which admissions must be back.
const RECOVERY_BOUND: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admissions_return_within_seconds_of_the_chain() {
    let work = prepared_dir("recovery", &[5, 6, 7, 8, 9]);
    let deposits = [1_000_000_000_000_000_000u128];
    let mut chain = Chain::start(Some(work.join("anvil-state.json")), &deposits).await;
    let setup = ServerSetup::for_chain(&work, &chain, 1, 5);
    let server = setup.spawn_with(&["--deposit-max-staleness-secs".into(), "2".into()]);
    let (http, url) = (reqwest::Client::new(), server.url(""));
    let call = |i: usize| payer0_call(&http, &url, i);
    let mut i = 0;
    let mut served = 0;
    assert_eq!(call(i).await.0, 200);
    served += 1;

    chain.stop();
    let down = Instant::now();
    let mut refused = 0;
    // 1 + 2 + 4 + 8 s of backoff have passed by ~16 s: the worker now sleeps 16 s more.
    while down.elapsed() < Duration::from_secs(17) {
        i += 1;
        let (status, body) = call(i).await;
        match status {
            200 => served += 1,
            503 => {
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("deposit-max-staleness-secs"),
                    "{body}"
                );
                refused += 1;
            }
            _ => panic!("{status}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        refused > 10,
        "calls are refused once the deposit reading is stale ({refused})"
    );

    chain.restart();
    let back = Instant::now();
    loop {
        i += 1;
        let (status, body) = call(i).await;
        if status == 200 {
            served += 1;
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            back.elapsed() < RECOVERY_BOUND,
            "still refused {:?} after the chain returned: {body}",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("admitted again {:?} after anvil restarted", back.elapsed());
    let store = wait_settled(&setup.ledger(), Duration::from_secs(60));
    assert_eq!(store.all_amounts().unwrap().len(), served);
    check_books(&chain, &store, &deposits).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}

/// A chain that comes back without a transaction whose receipt the server recorded (anvil
/// restarted from a state dumped before the batches landed, as a node restored from an older
/// snapshot or a reorg would): once the chain answers again, the worker re-checks the batches it
/// recorded settled before the outage, finds them missing, puts them back to `pending` and
/// resubmits them, so the chain's balances end equal to the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_batches_the_restarted_chain_lost_are_resubmitted() {
    let work = prepared_dir("recovery-lost", &[5, 6, 7, 8, 9]);
    let deposits = [1_000_000_000_000_000_000u128];
    let state = work.join("anvil-state.json");
    let mut chain = Chain::start(Some(state.clone()), &deposits).await;
    // The state with the contracts and the deposit, before any batch.
    chain.stop();
    let before = work.join("anvil-state-before.json");
    std::fs::copy(&state, &before).unwrap();
    chain.restart();
    let setup = ServerSetup::for_chain(&work, &chain, 1, 2);
    let server = setup.spawn();
    let (http, url) = (reqwest::Client::new(), server.url(""));
    let mut served = 0;
    for i in 0..4 {
        let (status, body) = payer0_call(&http, &url, i).await;
        assert_eq!(status, 200, "{body}");
        served += 1;
    }
    let store = wait_settled(&setup.ledger(), Duration::from_secs(60));
    let landed = store.all_batches().unwrap();
    assert!(
        !landed.is_empty() && landed.iter().all(|b| b.settled.is_some()),
        "batches landed before the outage"
    );
    // The chain goes down, and comes back from the older state: those batches are gone.
    chain.stop();
    std::fs::copy(&before, &state).unwrap();
    // A call while it is down makes the worker meet the outage.
    let (status, body) = complete(
        &http,
        &url,
        &api_key(0),
        ADAPTERS[0],
        &prompt_for(9),
        3,
        false,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    served += 1;
    tokio::time::sleep(Duration::from_secs(3)).await;
    chain.restart();
    for b in &landed {
        assert!(
            !chain.admin.batch_settled(b.id.0).await.unwrap(),
            "the restarted chain does not have {:?}",
            b.id
        );
    }
    // Resubmitted: every batch on chain again, and the books balance.
    let start = Instant::now();
    loop {
        let mut all = true;
        for b in &landed {
            all &= chain.admin.batch_settled(b.id.0).await.unwrap();
        }
        if all {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "lost batches not resubmitted"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let store = wait_settled(&setup.ledger(), Duration::from_secs(60));
    assert_eq!(store.all_amounts().unwrap().len(), served);
    check_books(&chain, &store, &deposits).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}
