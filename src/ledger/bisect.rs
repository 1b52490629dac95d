//! Settlement liveness: which records of a would-be batch the chain will not settle.
//!
//! A candidate batch is first run as an `eth_call` (`Settler::simulate_batch`, no gas). If it
//! reverts (a contract error such as `InsufficientEscrow` after a payer's withdrawal executed),
//! it is bisected: each half is simulated, a single record that reverts alone is unsettleable
//! (with the revert as its reason), and two halves that pass alone but not together settle the
//! first half now and leave the second for the next batch. What always holds:
//! - every round either returns records that settle together now or marks at least one record
//!   unsettleable, so no batch is retried forever and later records are never blocked;
//! - transport errors, and reverts that are not about the records (`blames_records`: a paused
//!   contract, a revoked operator, ...), abort the search and the worker backs off, marking
//!   nothing;
//! - the records to settle keep ledger order.

use super::settlement::{batch_amounts, batch_id};
use super::store::{StoredBatch, UnbatchedRow};
use crate::chain::{Batch, ChainError, MerkleTree, Settler};
use alloy::primitives::{Address, B256};
use std::future::Future;
use std::pin::Pin;

/// The outcome of one search.
#[derive(Default)]
pub struct Split {
    /// Records that settle together now, in ledger order.
    pub settle: Vec<UnbatchedRow>,
    /// Records that revert even alone, with the revert.
    pub unsettleable: Vec<(UnbatchedRow, ChainError)>,
}

/// The batch of `rows` (non-empty) under fee `bps`, as written before submission.
pub fn build_batch(rows: &[UnbatchedRow], bps: u16, operator: Address) -> StoredBatch {
    let leaves: Vec<B256> = rows.iter().map(|r| r.leaf).collect();
    let tree = MerkleTree::new(leaves.clone()).expect("non-empty");
    let (debits, credits) = batch_amounts(rows, bps, operator);
    StoredBatch {
        id: batch_id(operator, &leaves),
        root: tree.root(),
        call_count: rows.len() as u64,
        fee_bps: bps,
        debits,
        credits,
        settled: None,
    }
}

pub fn to_chain(b: &StoredBatch) -> Batch {
    Batch {
        id: b.id.0,
        receipts_root: b.root,
        call_count: b.call_count,
        debits: b.debits.clone(),
        credits: b.credits.clone(),
    }
}

/// A revert that can be caused by the records themselves: a payer's escrow is short
/// (`InsufficientEscrow`), a recipient is the zero address, a transaction reverted on chain, or
/// a revert that could not be decoded. Transport errors and reverts about the contract's state
/// or the batch as a whole (`EnforcedPause`, `NotOperator`, `BatchAlreadySettled`,
/// `CreditsMismatch` after a fee change, ...) are not: they never mark a record, the worker backs
/// off and retries.
pub fn blames_records(e: &ChainError) -> bool {
    match e {
        ChainError::TxFailed(_) => true,
        ChainError::Reverted(_) => matches!(
            e.revert_label().as_deref(),
            Some("insufficient_escrow" | "zero_address" | "revert")
        ),
        _ => false,
    }
}

async fn simulate(settler: &Settler, rows: &[UnbatchedRow], bps: u16) -> Result<(), ChainError> {
    let b = build_batch(rows, bps, settler.signer_address());
    settler.simulate_batch(&to_chain(&b)).await
}

type Search<'a> = Pin<Box<dyn Future<Output = Result<Split, ChainError>> + Send + 'a>>;

/// Splits `rows` into records that settle together now and records that never will.
pub fn split_settleable(settler: &Settler, mut rows: Vec<UnbatchedRow>, bps: u16) -> Search<'_> {
    Box::pin(async move {
        if rows.is_empty() {
            return Ok(Split::default());
        }
        match simulate(settler, &rows, bps).await {
            Ok(()) => {
                return Ok(Split {
                    settle: rows,
                    unsettleable: vec![],
                })
            }
            Err(e) if !blames_records(&e) => return Err(e),
            Err(e) if rows.len() == 1 => {
                return Ok(Split {
                    settle: vec![],
                    unsettleable: vec![(rows.remove(0), e)],
                })
            }
            Err(_) => {}
        }
        let right = rows.split_off(rows.len() / 2);
        let a = split_settleable(settler, rows, bps).await?;
        let b = split_settleable(settler, right, bps).await?;
        let mut unsettleable = a.unsettleable;
        unsettleable.extend(b.unsettleable);
        let settle = match (a.settle.is_empty(), b.settle.is_empty()) {
            (true, _) => b.settle,
            (_, true) => a.settle,
            _ => {
                let both: Vec<UnbatchedRow> = a.settle.iter().chain(&b.settle).cloned().collect();
                match simulate(settler, &both, bps).await {
                    Ok(()) => both,
                    Err(e) if !blames_records(&e) => return Err(e),
                    // Each half settles alone, not together: the first now, the rest later.
                    Err(_) => a.settle,
                }
            }
        };
        Ok(Split {
            settle,
            unsettleable,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_record_level_reverts_blame_records() {
        let r = |t: &str| ChainError::Reverted(t.into());
        assert!(blames_records(&r(
            "InsufficientEscrow(InsufficientEscrow { .. })"
        )));
        assert!(blames_records(&r("revert data 0x12")));
        assert!(!blames_records(&r("EnforcedPause(EnforcedPause)")));
        assert!(!blames_records(&r(
            "NotOperator(NotOperator { caller: 0x01 })"
        )));
        assert!(!blames_records(&r(
            "CreditsMismatch(CreditsMismatch { .. })"
        )));
        assert!(!blames_records(&ChainError::Rpc(
            "connection refused".into()
        )));
    }
}
