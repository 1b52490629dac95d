//! `AdapterCatalog`: what `AdapterRegistry` says about each adapter the server serves (owner,
//! active flag, weights hash, prices, fee split, datanets), read over JSON-RPC and cached.
//!
//! What always holds:
//! - an adapter's on-chain id is `keccak256(name)` (as in receipts);
//! - an entry is `Registered` or `Unregistered` exactly as the chain answered at the last read;
//!   an id never read (RPC down) has no entry, and callers treat it as unknown, never as either;
//! - `refresh` reads the registry's event logs (`AdapterRegistered`, `AdapterPriceUpdated`,
//!   `AdapterDeactivated`: each has the adapter id as its first topic) since the last block it
//!   read and re-reads exactly the cached ids they name (every cached id on the first refresh),
//!   so a price change or a deactivation is seen within one refresh interval at a cost that does
//!   not grow with the number of adapters served;
//! - many ids are read with `fetch_many` (`catalog_batch`): one JSON-RPC batch request per page of
//!   adapters, never two requests per adapter.

use super::contracts::AdapterRegistry::{self, AdapterRegistryErrors, AdapterRegistryInstance};
use super::ChainError;
use alloy::primitives::{keccak256, Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::Filter;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

/// One adapter as registered on chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnChainAdapter {
    pub owner: Address,
    pub active: bool,
    pub weights_hash: B256,
    pub price_per_m_input: U256,
    pub price_per_m_output: U256,
    /// (owner, contributors, operator) bps; they sum to 10_000.
    pub split_bps: (u16, u16, u16),
    /// (datanet id, weight bps).
    pub trained_on: Vec<(B256, u16)>,
}

/// The chain's answer for one adapter id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    Registered(Arc<OnChainAdapter>),
    Unregistered,
}

/// A registered adapter's listing from `getAdapter` and `getTrainedOn`.
pub(super) fn registered(
    a: crate::chain::contracts::AdapterRegistry::Adapter,
    trained: Vec<crate::chain::contracts::AdapterRegistry::DatanetWeight>,
) -> Listing {
    Listing::Registered(Arc::new(OnChainAdapter {
        owner: a.owner,
        active: a.active,
        weights_hash: a.weightsHash,
        price_per_m_input: U256::from(a.pricePerMInput),
        price_per_m_output: U256::from(a.pricePerMOutput),
        split_bps: (
            a.split.ownerBps,
            a.split.contributorsBps,
            a.split.operatorBps,
        ),
        trained_on: trained
            .into_iter()
            .map(|d| (d.datanetId, d.weightBps))
            .collect(),
    }))
}

/// The on-chain id of adapter `name`.
pub fn onchain_adapter_id(name: &str) -> B256 {
    keccak256(name.as_bytes())
}

pub struct AdapterCatalog {
    registry: AdapterRegistryInstance<DynProvider>,
    cache: RwLock<HashMap<B256, Listing>>,
    /// The last block whose events `refresh` has applied.
    synced_to: tokio::sync::Mutex<Option<u64>>,
}

impl AdapterCatalog {
    /// A read-only client of the `AdapterRegistry` at `address`; contacts nothing yet.
    pub fn connect_lazy(rpc_url: &str, address: Address) -> Result<Self, ChainError> {
        let url = rpc_url
            .parse()
            .map_err(|e| ChainError::InvalidUrl(format!("{rpc_url}: {e}")))?;
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .connect_http(url)
            .erased();
        Ok(Self::new(provider, address))
    }

    pub fn new(provider: DynProvider, address: Address) -> Self {
        AdapterCatalog {
            registry: AdapterRegistry::new(address, provider),
            cache: RwLock::default(),
            synced_to: tokio::sync::Mutex::new(None),
        }
    }

    pub(super) fn registry_address(&self) -> Address {
        *self.registry.address()
    }

    pub(super) fn remember(&self, id: B256, listing: Listing) {
        self.cache.write().expect("catalog").insert(id, listing);
    }

    pub fn provider(&self) -> &DynProvider {
        self.registry.provider()
    }

    /// The `DatanetRegistry` this adapter registry checks datanets against.
    pub async fn datanet_registry(&self) -> Result<Address, ChainError> {
        self.registry
            .datanets()
            .call()
            .await
            .map_err(ChainError::from_contract)
    }

    /// The last answer for `id`, if the chain was ever reached for it.
    pub fn cached(&self, id: B256) -> Option<Listing> {
        self.cache.read().expect("catalog").get(&id).cloned()
    }

    /// Reads `id` from chain now and caches the answer.
    pub async fn fetch(&self, id: B256) -> Result<Listing, ChainError> {
        let listing = match self.registry.getAdapter(id).call().await {
            Ok(a) => {
                let trained = self
                    .registry
                    .getTrainedOn(id)
                    .call()
                    .await
                    .map_err(ChainError::from_contract)?;
                registered(a, trained)
            }
            Err(e) => match e.as_decoded_interface_error::<AdapterRegistryErrors>() {
                Some(AdapterRegistryErrors::UnknownAdapter(_)) => Listing::Unregistered,
                _ => return Err(ChainError::from_contract(e)),
            },
        };
        self.cache
            .write()
            .expect("catalog")
            .insert(id, listing.clone());
        Ok(listing)
    }

    /// Applies the registry's events since the last refresh: re-reads the cached ids they name
    /// (all cached ids the first time). Returns the ids whose listing changed.
    pub async fn refresh(&self) -> Result<Vec<B256>, ChainError> {
        let mut synced = self.synced_to.lock().await;
        let rpc = |e: alloy::transports::TransportError| ChainError::Rpc(e.to_string());
        let head = self.provider().get_block_number().await.map_err(rpc)?;
        let cached: Vec<B256> = self
            .cache
            .read()
            .expect("catalog")
            .keys()
            .copied()
            .collect();
        let ids: Vec<B256> = match *synced {
            None => cached,
            Some(from) if from >= head => vec![],
            Some(from) => {
                let filter = Filter::new()
                    .address(*self.registry.address())
                    .from_block(from + 1)
                    .to_block(head);
                match self.provider().get_logs(&filter).await {
                    Ok(logs) => {
                        let named: HashSet<B256> = logs
                            .iter()
                            .filter_map(|l| l.topics().get(1).copied())
                            .collect();
                        cached.into_iter().filter(|id| named.contains(id)).collect()
                    }
                    // A node that refuses the range (some cap it) still answers reads.
                    Err(e) => {
                        tracing::warn!(error = %e, "reading AdapterRegistry events failed; re-reading every adapter");
                        cached
                    }
                }
            }
        };
        let before: Vec<Option<Listing>> = ids.iter().map(|id| self.cached(*id)).collect();
        let after = self.fetch_many(&ids).await?;
        let changed = ids
            .into_iter()
            .zip(before.into_iter().zip(after))
            .filter(|(_, (b, a))| b.as_ref() != Some(a))
            .map(|(id, _)| id)
            .collect();
        *synced = Some(head);
        Ok(changed)
    }
}
