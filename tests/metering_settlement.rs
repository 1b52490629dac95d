//! Acceptance (issue 6) against a real anvil and the real `openlora serve` binary:
//! 200 calls over 5 adapters and 3 payers settle on chain so that debits, credits and the
//! protocol fee equal the ledger's sums exactly, and every receipt's Merkle proof verifies against
//! the root stored on chain; a payer whose deposit runs out gets a 402 `insufficient_quota` while
//! the others continue; a completion that reproduces a span of contributor X's datanet record
//! attributes the datanet's weight to X.

mod metering_common;
use futures::StreamExt;
use metering_common::*;
use openlora::engine::{EngineHandle, GenerateRequest, LlmEngine, SamplingParams};
use openlora::lora::AdapterRegistry;
use openlora::model::Model;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const ATTR_PROMPT: [u32; 6] = [17, 42, 99, 7, 150, 3];

/// The greedy completion the server will produce for `prompt` with adapter `a8`.
fn greedy_a8(prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let dir = repo().join("tests/fixtures/tiny");
    let model = Arc::new(Model::load(&dir.join("model")).unwrap());
    let reg = AdapterRegistry::new(model.config().clone());
    reg.register("a8", &dir.join("adapters/a8")).unwrap();
    let engine = EngineHandle::spawn(LlmEngine::new(model, Default::default()).unwrap());
    let mut s = engine
        .submit_blocking(GenerateRequest {
            prompt_ids: prompt.to_vec(),
            adapters: vec![(reg.resolve("a8").unwrap(), 1.0)],
            params: SamplingParams {
                temperature: 0.0,
                max_tokens,
                ..Default::default()
            },
        })
        .unwrap();
    let mut out = vec![];
    while let Some(ev) = s.blocking_next() {
        out.extend(ev.token);
        if ev.finish.is_some() {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_calls_settle_exactly_and_every_receipt_verifies() {
    let work = fresh_dir("settle");
    let span = std::thread::spawn(|| greedy_a8(&ATTR_PROMPT, 12))
        .join()
        .unwrap();
    assert!(
        span.len() >= 6,
        "the attribution prompt should give a long enough completion: {span:?}"
    );
    write_adapters(&work.join("adapters"));
    write_datanets(&work.join("datanets"), &span);

    let deposits = [
        1_000_000_000_000_000_000u128,
        1_000_000_000_000_000_000,
        1_500_000_000,
    ];
    let chain = Chain::start(None, &deposits).await;
    let setup = ServerSetup {
        work: work.clone(),
        rpc: chain.url(),
        settlement: chain.deployment.settlement,
        payers: 3,
        max_records: 25,
        pause_after_submit: false,
        extra_keys: vec![],
    };
    let server = setup.spawn();
    let url = server.url("");
    let http = reqwest::Client::new();

    let results: Vec<(usize, u16, Value)> = futures::stream::iter(0..200usize)
        .map(|i| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let (status, body) = complete(
                    &http,
                    &url,
                    &api_key(i % 3),
                    ADAPTERS[(i / 3) % 5],
                    &prompt_for(i),
                    2 + (i % 5) as u32,
                    i.is_multiple_of(4),
                )
                .await;
                (i, status, body)
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;

    let mut ids = BTreeSet::new();
    let mut refused = 0;
    for (i, status, body) in &results {
        match (i % 3, status) {
            (_, 200) => {
                if body["usage"]["completion_tokens"].as_u64().unwrap() > 0 {
                    ids.insert((i % 3, body["id"].as_str().unwrap().to_string()));
                }
            }
            (2, 402) => {
                refused += 1;
                assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
                assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("insufficient funds"),
                    "{body}"
                );
            }
            _ => panic!("call {i}: status {status}: {body}"),
        }
    }
    assert!(refused > 0, "payer 2's deposit should run out");
    let served_poor = ids.iter().filter(|(p, _)| *p == 2).count();
    assert!(
        served_poor > 0,
        "payer 2 was served until its deposit ran out"
    );
    eprintln!(
        "served {} metered calls; payer 2 served {served_poor}, refused {refused}",
        ids.len()
    );

    // The owner raises the protocol fee: batches built from now on use it, and the books still
    // balance exactly (the contract checks credits + fee == debits per batch).
    wait_settled(&setup.ledger(), Duration::from_secs(120));
    let s = chain.admin.settlement();
    s.setProtocolFee(fee_recipient(), 1000)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();

    // Attribution: the completion reproduces contributor 1's span in dn-x.
    let (status, body) = complete(&http, &url, &api_key(0), "a8", &ATTR_PROMPT, 12, false).await;
    assert_eq!(status, 200, "{body}");
    let attr_id = body["id"].as_str().unwrap().to_string();
    ids.insert((0, attr_id.clone()));

    let store = wait_settled(&setup.ledger(), Duration::from_secs(120));
    let recorded: BTreeSet<String> = store
        .all_amounts()
        .unwrap()
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    let served: BTreeSet<String> = ids.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(
        recorded, served,
        "one ledger record per call that produced tokens"
    );
    check_books(&chain, &store, &deposits).await;
    let batches = store.all_batches().unwrap();
    assert_eq!(batches.first().unwrap().fee_bps, FEE_BPS);
    assert_eq!(
        batches.last().unwrap().fee_bps,
        1000,
        "the last batch uses the new fee"
    );
    for (p, id) in &ids {
        check_receipt(&http, &url, &api_key(*p), id, &chain).await;
    }
    // A payer cannot read another payer's receipts.
    let other = http
        .get(server.url(&format!("/v1/receipts/{attr_id}")))
        .bearer_auth(api_key(1))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 404);

    let r = check_receipt(&http, &url, &api_key(0), &attr_id, &chain).await;
    let attribution = r["attribution"].as_array().unwrap();
    let dn_x = attribution
        .iter()
        .find(|a| a["datanet"] == "dn-x")
        .expect("dn-x attributed");
    assert_eq!(dn_x["source"], "spans", "{r}");
    let who: Vec<String> = dn_x["contributors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[0].as_str().unwrap().to_lowercase())
        .collect();
    assert_eq!(who, vec![contributor(1).to_string().to_lowercase()], "{r}");
    assert!(dn_x["matched_tokens"].as_u64().unwrap() >= 4, "{r}");
    // The matched spans (output token ranges) cover exactly the matched tokens.
    let covered: u64 = dn_x["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["end"].as_u64().unwrap() - s["start"].as_u64().unwrap())
        .sum();
    assert_eq!(covered, dn_x["matched_tokens"].as_u64().unwrap(), "{r}");
    let dn_y = attribution
        .iter()
        .find(|a| a["datanet"] == "dn-y")
        .expect("dn-y attributed");
    assert_eq!(dn_y["source"], "static", "{r}");
    assert!(
        dn_y.get("spans").is_none(),
        "static shares have no spans: {r}"
    );
    let paid: Vec<String> = r["splits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["to"].as_str().unwrap().to_lowercase())
        .collect();
    assert!(
        paid.contains(&contributor(1).to_string().to_lowercase()),
        "{r}"
    );
    assert!(
        !paid.contains(&contributor(2).to_string().to_lowercase()),
        "{r}"
    );

    let metrics = metrics_text(&http, &server.url("")).await;
    for name in [
        "openlora_settlement_batches_total",
        "openlora_settlement_gas_used_total",
        "openlora_ledger_records_total",
    ] {
        let v: f64 = metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(v > 0.0, "{name} = {v}");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
}
