//! `AdapterCatalog`: what `AdapterRegistry` says about each adapter the server serves (owner,
//! active flag, weights hash, prices, fee split, datanets), read over JSON-RPC and cached.
//!
//! What always holds:
//! - an adapter's on-chain id is `keccak256(name)` (as in receipts);
//! - an entry is `Registered` or `Unregistered` exactly as the chain answered at the last read;
//!   an id never read (RPC down) has no entry, and callers treat it as unknown, never as either;
//! - `refresh` re-reads every cached id, so a price change or a deactivation is seen within one
//!   refresh interval (`AdapterPriceUpdated` / `AdapterDeactivated` change exactly these fields).

use super::contracts::AdapterRegistry::{self, AdapterRegistryErrors, AdapterRegistryInstance};
use super::ChainError;
use alloy::primitives::{keccak256, Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use std::collections::HashMap;
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

/// The on-chain id of adapter `name`.
pub fn onchain_adapter_id(name: &str) -> B256 {
    keccak256(name.as_bytes())
}

pub struct AdapterCatalog {
    registry: AdapterRegistryInstance<DynProvider>,
    cache: RwLock<HashMap<B256, Listing>>,
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
        }
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

    /// Re-reads every cached id; returns how many changed.
    pub async fn refresh(&self) -> Result<usize, ChainError> {
        let ids: Vec<(B256, Listing)> = self
            .cache
            .read()
            .expect("catalog")
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut changed = 0;
        for (id, before) in ids {
            if self.fetch(id).await? != before {
                changed += 1;
            }
        }
        Ok(changed)
    }
}
