//! End to end on a local OP Stack anvil: deploy the contracts, register an operator, two payers
//! deposit, the operator settles a batch whose receipts root is computed in Rust, balances on chain
//! match, every Rust proof verifies on chain, and the batch id cannot settle twice.
//!
//! anvil comes from `contracts/node_modules` (installed by `bash contracts/ci.sh install`), or
//! `$OPENLORA_ANVIL`, or PATH. The test fails if it cannot find one: CI installs it.

use alloy::primitives::{keccak256, Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use openlora::chain::anvil::{find_anvil, LocalAnvil, DEV_KEYS};
use openlora::chain::contracts::Settlement;
use openlora::chain::{
    protocol_fee, Batch, ChainError, DeployConfig, MerkleTree, Receipt, Settler,
};
use std::collections::BTreeMap;

const ETHER: u128 = 1_000_000_000_000_000_000;

fn addr(key: &str) -> Address {
    key.parse::<PrivateKeySigner>().unwrap().address()
}

fn start_anvil() -> LocalAnvil {
    let bin = find_anvil().expect(
        "anvil not found: run `bash contracts/ci.sh install` (npm @foundry-rs/anvil-linux-amd64) or set OPENLORA_ANVIL",
    );
    LocalAnvil::spawn(&bin, &[]).expect("anvil starts")
}

/// Split a call's cost the way the server does: protocol fee off the batch total later; here the
/// per-call non-fee part goes 60% owner, 30% contributor, 10% operator (rounding to the owner).
fn credits_for(
    receipts: &[Receipt],
    fee: U256,
    owner: Address,
    contributor: Address,
    operator: Address,
) -> Vec<(Address, U256)> {
    let total: U256 = receipts.iter().map(|r| r.cost).sum();
    let rest = total - fee;
    let to_contributor = rest * U256::from(3) / U256::from(10);
    let to_operator = rest / U256::from(10);
    vec![
        (owner, rest - to_contributor - to_operator),
        (contributor, to_contributor),
        (operator, to_operator),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_a_batch_on_local_op_anvil() {
    let anvil = start_anvil();
    let url = anvil.endpoint();
    let (owner_key, operator_key, payer1_key, payer2_key, fee_key) = (
        DEV_KEYS[0],
        DEV_KEYS[1],
        DEV_KEYS[2],
        DEV_KEYS[3],
        DEV_KEYS[4],
    );
    let (operator, payer1, payer2, fee_to) = (
        addr(operator_key),
        addr(payer1_key),
        addr(payer2_key),
        addr(fee_key),
    );
    let adapter_owner = Address::repeat_byte(0xA0);
    let contributor = Address::repeat_byte(0xC0);

    // Deploy and register the operator.
    let cfg = DeployConfig {
        owner: None,
        fee_recipient: fee_to,
        protocol_fee_bps: 250,
        withdrawal_delay_secs: 86_400,
    };
    let admin = Settler::deploy_all(&url, owner_key, &cfg)
        .await
        .expect("deploy");
    let deployment = admin.deployment();
    admin
        .set_operator(operator, true)
        .await
        .expect("set operator");
    assert_eq!(admin.protocol_fee_bps().await.unwrap(), 250);

    // Two payers deposit.
    let p1 = Settler::connect(&url, payer1_key, deployment)
        .await
        .unwrap();
    let p2 = Settler::connect(&url, payer2_key, deployment)
        .await
        .unwrap();
    p1.deposit(U256::from(ETHER)).await.expect("deposit 1");
    p2.deposit(U256::from(2 * ETHER)).await.expect("deposit 2");
    assert_eq!(p1.balances(payer1).await.unwrap().escrow, U256::from(ETHER));

    // Seven calls, alternating payers.
    let adapter_id = keccak256("sql-lora");
    let receipts: Vec<Receipt> = (0..7u64)
        .map(|i| Receipt {
            receipt_id: keccak256(format!("req-{i}")),
            adapter_id,
            payer: if i % 2 == 0 { payer1 } else { payer2 },
            operator,
            input_tokens: 100 + i,
            output_tokens: 40 + 3 * i,
            cost: U256::from(1_000_000_000_000_000u64 * (i + 1)), // 0.001 ether per step: earnings dwarf claim gas
            timestamp: 1_790_000_000 + i,
        })
        .collect();
    let tree = MerkleTree::from_receipts(&receipts).unwrap();
    let mut debits: BTreeMap<Address, U256> = BTreeMap::new();
    for r in &receipts {
        *debits.entry(r.payer).or_default() += r.cost;
    }
    let total: U256 = receipts.iter().map(|r| r.cost).sum();
    let fee = protocol_fee(total, 250);
    let credits = credits_for(&receipts, fee, adapter_owner, contributor, operator);
    let batch = Batch {
        id: keccak256("batch-0001"),
        receipts_root: tree.root(),
        call_count: receipts.len() as u64,
        debits: debits.clone().into_iter().collect(),
        credits: credits.clone(),
    };
    assert_eq!(batch.total_credits() + fee, batch.total_debits());

    let op = Settler::connect(&url, operator_key, deployment)
        .await
        .unwrap();
    assert!(!op.batch_settled(batch.id).await.unwrap());
    let settled = op.settle_batch(&batch).await.expect("settle");
    eprintln!(
        "settleBatch: 7 calls, 2 payers, 3 recipients: gas {}",
        settled.gas_used
    );
    assert!(op.batch_settled(batch.id).await.unwrap());
    assert_eq!(op.batch_root(batch.id).await.unwrap(), Some(tree.root()));

    // Balances on chain equal what we computed.
    for (payer, deposit) in [(payer1, ETHER), (payer2, 2 * ETHER)] {
        let b = op.balances(payer).await.unwrap();
        assert_eq!(
            b.escrow,
            U256::from(deposit) - debits[&payer],
            "escrow of {payer}"
        );
    }
    for (who, credit) in &credits {
        assert_eq!(
            op.balances(*who).await.unwrap().earnings,
            *credit,
            "earnings of {who}"
        );
    }
    assert_eq!(op.balances(fee_to).await.unwrap().earnings, fee);
    let held = op.provider_balance(deployment.settlement).await;
    assert_eq!(
        held,
        U256::from(3 * ETHER),
        "the contract holds all deposits until claims"
    );

    // Rust leaves and proofs verify on chain; the contract computes the same leaf.
    let s = op.settlement();
    for (i, r) in receipts.iter().enumerate() {
        let proof = tree.proof(i).unwrap();
        assert!(
            op.verify_receipt(batch.id, r.leaf(), &proof).await.unwrap(),
            "receipt {i}"
        );
        let onchain_leaf = s
            .receiptLeaf(Settlement::Receipt {
                receiptId: r.receipt_id,
                adapterId: r.adapter_id,
                payer: r.payer,
                operator: r.operator,
                inputTokens: r.input_tokens,
                outputTokens: r.output_tokens,
                cost: r.cost,
                timestamp: r.timestamp,
            })
            .call()
            .await
            .unwrap();
        assert_eq!(onchain_leaf, r.leaf(), "leaf {i}");
    }
    let forged = keccak256("not a receipt");
    assert!(!op
        .verify_receipt(batch.id, forged, &tree.proof(0).unwrap())
        .await
        .unwrap());

    // The same batch id cannot settle again, even with a different root.
    let mut again = batch.clone();
    again.receipts_root = B256::repeat_byte(7);
    match op.settle_batch(&again).await {
        Err(ChainError::BatchAlreadySettled(id)) => assert_eq!(id, batch.id),
        other => panic!("expected BatchAlreadySettled, got {other:?}"),
    }

    // Only operators settle.
    let fresh = Batch {
        id: keccak256("batch-0002"),
        ..batch.clone()
    };
    match p1.settle_batch(&fresh).await {
        Err(ChainError::Reverted(msg)) => assert!(msg.contains("NotOperator"), "{msg}"),
        other => panic!("expected NotOperator, got {other:?}"),
    }

    // A recipient with a key claims its earnings.
    let before = op.provider_balance(operator).await;
    let earned = op.balances(operator).await.unwrap().earnings;
    op.claim().await.expect("claim");
    assert_eq!(op.balances(operator).await.unwrap().earnings, U256::ZERO);
    let after = op.provider_balance(operator).await;
    assert!(
        after > before && after <= before + earned,
        "claim paid (minus gas)"
    );
}

trait BalanceExt {
    async fn provider_balance(&self, who: Address) -> U256;
}

impl BalanceExt for Settler {
    async fn provider_balance(&self, who: Address) -> U256 {
        use alloy::providers::Provider;
        self.provider().get_balance(who).await.unwrap()
    }
}
