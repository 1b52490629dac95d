//! The books of the metering acceptance tests: the chain's balances, batches and receipts
//! against the ledger.

use super::{fee_recipient, payer, Chain};
use alloy::primitives::{Address, B256, U256};
use openlora::ledger::Store;
use serde_json::Value;
use std::collections::BTreeMap;

/// On-chain balances equal the ledger: each payer's debit is the sum of its records, each
/// recipient's earnings the sum of its batch credits, the fee recipient's the rest; every batch
/// is settled on chain with the ledger's root.
pub async fn check_books(chain: &Chain, store: &Store, deposits: &[u128]) {
    // Records the chain would not settle (isolated as unsettleable) are in no batch.
    let unsettleable: Vec<String> = store
        .unsettleable()
        .unwrap()
        .into_iter()
        .map(|u| u.0)
        .collect();
    let records: Vec<_> = store
        .all_amounts()
        .unwrap()
        .into_iter()
        .filter(|r| !unsettleable.contains(&r.0))
        .collect();
    let batches = store.all_batches().unwrap();
    let mut spent: BTreeMap<Address, U256> = BTreeMap::new();
    for (_, p, a) in &records {
        *spent.entry(*p).or_default() += *a;
    }
    for (i, d) in deposits.iter().enumerate() {
        let escrow = chain.admin.balances(payer(i)).await.unwrap().escrow;
        let s = spent.get(&payer(i)).copied().unwrap_or_default();
        assert_eq!(
            U256::from(*d) - escrow,
            s,
            "payer {i}: on-chain debit vs ledger sum"
        );
    }
    let mut credits: BTreeMap<Address, U256> = BTreeMap::new();
    let mut debits_total = U256::ZERO;
    let mut calls = 0;
    for b in &batches {
        assert!(b.settled.is_some(), "batch {:?} not settled", b.id);
        assert_eq!(
            chain.admin.batch_root(b.id.0).await.unwrap(),
            Some(b.root),
            "root of {:?}",
            b.id
        );
        for (who, x) in &b.credits {
            *credits.entry(*who).or_default() += *x;
        }
        debits_total += b.debits.iter().map(|(_, x)| *x).sum::<U256>();
        calls += b.call_count as usize;
    }
    assert_eq!(calls, records.len(), "every record is in exactly one batch");
    let ledger_total: U256 = spent.values().copied().sum();
    assert_eq!(debits_total, ledger_total, "batch debits vs ledger amounts");
    let credited: U256 = credits.values().copied().sum();
    for (who, x) in &credits {
        assert_eq!(
            chain.admin.balances(*who).await.unwrap().earnings,
            *x,
            "earnings of {who}"
        );
    }
    assert_eq!(
        chain
            .admin
            .balances(fee_recipient())
            .await
            .unwrap()
            .earnings,
        ledger_total - credited,
        "protocol fee"
    );
    // No other batch landed on chain.
    let events = chain
        .admin
        .settlement()
        .BatchSettled_filter()
        .from_block(0u64)
        .query()
        .await
        .unwrap();
    assert_eq!(
        events.len(),
        batches.len(),
        "BatchSettled events vs ledger batches"
    );
}

/// `GET /v1/receipts/{request_id}` as `key`.
pub async fn receipt_json(
    http: &reqwest::Client,
    server_url: &str,
    key: &str,
    request_id: &str,
) -> Value {
    http.get(format!("{server_url}/v1/receipts/{request_id}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The receipt of `request_id` (as its payer sees it) verifies on chain against its batch root.
pub async fn check_receipt(
    http: &reqwest::Client,
    server_url: &str,
    key: &str,
    request_id: &str,
    chain: &Chain,
) -> Value {
    let r = receipt_json(http, server_url, key, request_id).await;
    assert_eq!(r["status"], "settled", "{r}");
    let rc = &r["receipt"];
    let receipt = openlora::chain::Receipt {
        receipt_id: rc["receipt_id"].as_str().unwrap().parse().unwrap(),
        adapter_id: rc["adapter_id"].as_str().unwrap().parse().unwrap(),
        payer: rc["payer"].as_str().unwrap().parse().unwrap(),
        operator: rc["operator"].as_str().unwrap().parse().unwrap(),
        input_tokens: rc["input_tokens"].as_u64().unwrap(),
        output_tokens: rc["output_tokens"].as_u64().unwrap(),
        cost: rc["cost"].as_str().unwrap().parse().unwrap(),
        timestamp: rc["timestamp"].as_u64().unwrap(),
    };
    let leaf: B256 = r["leaf"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        receipt.leaf(),
        leaf,
        "leaf recomputed from the receipt fields"
    );
    let b = &r["batch"];
    let proof: Vec<B256> = b["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().parse().unwrap())
        .collect();
    let root: B256 = b["merkle_root"].as_str().unwrap().parse().unwrap();
    let batch_id: B256 = b["batch_id"].as_str().unwrap().parse().unwrap();
    assert!(openlora::chain::merkle::verify(&proof, root, leaf));
    assert!(
        chain
            .admin
            .verify_receipt(batch_id, leaf, &proof)
            .await
            .unwrap(),
        "on-chain proof of {request_id}"
    );
    assert!(b["settlement_tx"].is_string(), "{r}");
    r
}
