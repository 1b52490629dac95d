//! `AdapterCatalog::fetch_many`: the listings of many adapter ids with one HTTP request per page
//! of `PAGE` ids — a JSON-RPC batch of `eth_call`s (`getAdapter` and `getTrainedOn` of each id,
//! at one block so the two agree) — cached exactly as `fetch` caches one answer. An id the
//! registry does not know (`UnknownAdapter`) is `Unregistered`; any other failure fails the page
//! and caches nothing of it.

use super::catalog::{registered, AdapterCatalog, Listing};
use super::contracts::AdapterRegistry::{getAdapterCall, getTrainedOnCall, AdapterRegistryErrors};
use super::ChainError;
use alloy::eips::BlockId;
use alloy::primitives::{Bytes, B256};
use alloy::providers::Provider;
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::{SolCall, SolInterface};

/// Ids read per JSON-RPC batch (two calls each).
pub const PAGE: usize = 250;

fn rpc(e: impl std::fmt::Display) -> ChainError {
    ChainError::Rpc(e.to_string())
}

impl AdapterCatalog {
    /// Reads every id now (one batch request per page) and caches the answers, in `ids` order.
    pub async fn fetch_many(&self, ids: &[B256]) -> Result<Vec<Listing>, ChainError> {
        let mut out = Vec::with_capacity(ids.len());
        for page in ids.chunks(PAGE) {
            out.extend(self.fetch_page(page).await?);
        }
        Ok(out)
    }

    async fn fetch_page(&self, ids: &[B256]) -> Result<Vec<Listing>, ChainError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let block = self.provider().get_block_number().await.map_err(rpc)?;
        let at = BlockId::number(block);
        let to = self.registry_address();
        let call = |data: Vec<u8>| (TransactionRequest::default().to(to).input(data.into()), at);
        let client = self.provider().client();
        let mut batch = alloy::rpc::client::BatchRequest::new(&client);
        let mut waiters = Vec::with_capacity(ids.len());
        for id in ids {
            let a = batch
                .add_call::<_, Bytes>("eth_call", &call(getAdapterCall { id: *id }.abi_encode()))
                .map_err(rpc)?;
            let t = batch
                .add_call::<_, Bytes>("eth_call", &call(getTrainedOnCall { id: *id }.abi_encode()))
                .map_err(rpc)?;
            waiters.push((*id, a, t));
        }
        batch.send().await.map_err(rpc)?;
        let mut listings = Vec::with_capacity(ids.len());
        for (id, a, t) in waiters {
            let listing = match a.await {
                Ok(bytes) => {
                    let a = getAdapterCall::abi_decode_returns(&bytes).map_err(rpc)?;
                    let t = t.await.map_err(rpc)?;
                    registered(a, getTrainedOnCall::abi_decode_returns(&t).map_err(rpc)?)
                }
                Err(e) => {
                    let revert = e.as_error_resp().and_then(|p| p.as_revert_data());
                    match revert.map(|d| AdapterRegistryErrors::abi_decode(&d)) {
                        Some(Ok(AdapterRegistryErrors::UnknownAdapter(_))) => Listing::Unregistered,
                        _ => return Err(rpc(e)),
                    }
                }
            };
            listings.push((id, listing));
        }
        for (id, l) in &listings {
            self.remember(*id, l.clone());
        }
        Ok(listings.into_iter().map(|(_, l)| l).collect())
    }
}
