//! Batched settlement on an OP Stack chain, through the contracts in `contracts/`.
//!
//! What always holds:
//! - the bindings (`contracts`) are generated from `contracts/abi/*.json`, which `contracts/ci.sh`
//!   checks against the Solidity sources, so Rust and the deployed bytecode agree;
//! - `merkle` computes receipt leaves, roots and proofs exactly as `Settlement.verifyReceipt`
//!   checks them (double-keccak ABI-encoded leaves, sorted-pair keccak nodes, odd node carried up);
//! - a batch's credits sum to its debits minus `protocol_fee(total, bps)`; the contract takes the
//!   fee itself and rejects any other sum;
//! - a batch id settles at most once: `Settler::batch_settled(id)` tells a restarted server whether
//!   a batch it built already landed, and resubmitting it fails with `ChainError::BatchAlreadySettled`;
//! - `AdapterCatalog` caches `AdapterRegistry`'s answer per adapter id and never guesses one it
//!   could not read;
//! - every `Settler` write waits for its receipt and fails unless the transaction succeeded;
//! - `Registrar` registers an adapter and its datanet idempotently: it writes only what the chain
//!   does not already hold, and an id held with other terms is a `ChainError::Conflict`.

pub mod anvil;
pub mod catalog;
mod catalog_batch;
pub mod contracts;
pub mod merkle;
pub mod registrar;
pub mod settler;

pub use catalog::{onchain_adapter_id, AdapterCatalog, Listing, OnChainAdapter};
pub use merkle::{MerkleTree, Receipt};
pub use registrar::{AdapterEntry, DatanetEntry, Registrar, Registration};
pub use settler::{
    protocol_fee, Balances, Batch, DeployConfig, Deployment, SettledBatch, Settler, NATIVE,
};

use alloy::primitives::B256;
use contracts::Settlement::SettlementErrors;

/// Why a chain operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("invalid signer key: {0}")]
    InvalidKey(String),
    #[error("invalid RPC URL {0}")]
    InvalidUrl(String),
    #[error("batch {0} is already settled")]
    BatchAlreadySettled(B256),
    #[error("contract reverted: {0}")]
    Reverted(String),
    #[error("transaction {0} reverted on chain")]
    TxFailed(B256),
    #[error("RPC error: {0}")]
    Rpc(String),
    /// The chain holds the id with other terms (see `registrar`).
    #[error("{0}")]
    Conflict(String),
}

impl ChainError {
    /// Whether trying again may succeed: the node was unreachable or a transaction did not land
    /// (a revert or a conflict will not change by itself).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Rpc(_) | Self::TxFailed(_))
    }

    /// For a revert, the contract error's name in snake_case (`insufficient_escrow`), the label
    /// under which settlement failures are counted; `None` for transport errors.
    pub fn revert_label(&self) -> Option<String> {
        let text = match self {
            Self::Reverted(t) => t.as_str(),
            Self::TxFailed(_) => "tx_failed",
            Self::BatchAlreadySettled(_) => "BatchAlreadySettled",
            _ => return None,
        };
        let name: String = text
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let mut out = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        }
        Some(if out.is_empty() { "revert".into() } else { out })
    }

    /// Decode a contract call/estimate failure into Settlement's custom errors where possible.
    pub fn from_contract(e: alloy::contract::Error) -> Self {
        if let Some(err) = e.as_decoded_interface_error::<SettlementErrors>() {
            return match err {
                SettlementErrors::BatchAlreadySettled(x) => Self::BatchAlreadySettled(x.batchId),
                other => Self::Reverted(format!("{other:?}")),
            };
        }
        if let Some(data) = e.as_revert_data() {
            return Self::Reverted(format!("revert data {data}"));
        }
        Self::Rpc(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revert_labels_are_snake_case_error_names() {
        let e = ChainError::Reverted(
            "InsufficientEscrow(InsufficientEscrow { payer: 0x01, available: 0, needed: 5 })"
                .into(),
        );
        assert_eq!(e.revert_label().as_deref(), Some("insufficient_escrow"));
        let e = ChainError::Reverted("revert data 0x1234".into());
        assert_eq!(e.revert_label().as_deref(), Some("revert"));
        assert_eq!(
            ChainError::Rpc("connection refused".into()).revert_label(),
            None
        );
    }
}
