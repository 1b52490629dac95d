//! What one call costs and who is paid. With the on-chain registry configured
//! (`--adapter-registry-address`), an adapter's terms (owner, prices, datanets, fee split) are
//! `AdapterRegistry`'s, from the `AdapterCatalog` cache kept fresh by the chain sync task, and
//! manifests are ignored; a deactivated adapter is refused, one never read from chain is not
//! served (503), one not registered is priced like the base model. Otherwise terms come from the
//! adapter's `manifest.json` (adapters/README.md), read once per adapter folder and cached. An
//! adapter without terms, and the base model, are priced at the configured default and pay
//! everything to the operator. Costs follow `AdapterRegistry.quote`:
//! `ceil((input * pricePerMInput + output * pricePerMOutput) / 1e6)`. Terms are taken when a call
//! is admitted, so a price change applies to calls admitted after it is seen.

use crate::chain::{AdapterCatalog, Listing, OnChainAdapter};
use crate::error::{Error, Result};
use crate::lora::AdapterRef;
use alloy::primitives::{keccak256, Address, B256, U256};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub const BPS: u64 = 10_000;

/// How the non-fee part of a call's cost is divided; the three parts sum to 10_000 bps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FeeSplit {
    pub owner_bps: u16,
    pub contributors_bps: u16,
    pub operator_bps: u16,
}

impl FeeSplit {
    /// Everything to the operator (base model, adapters without a manifest).
    pub const OPERATOR_ONLY: FeeSplit = FeeSplit {
        owner_bps: 0,
        contributors_bps: 0,
        operator_bps: 10_000,
    };
}

/// Price per one million tokens, in wei.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub per_m_input: U256,
    pub per_m_output: U256,
}

impl Price {
    /// `AdapterRegistry.quote`: rounded up.
    pub fn quote(&self, input_tokens: u64, output_tokens: u64) -> U256 {
        let num = U256::from(input_tokens) * self.per_m_input
            + U256::from(output_tokens) * self.per_m_output;
        num.div_ceil(U256::from(1_000_000u64))
    }
}

/// One adapter's on-chain terms, as its manifest states them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterTerms {
    pub name: String,
    /// `keccak256(name)`: the id in `AdapterRegistry` and in receipts.
    pub adapter_id: B256,
    pub owner: Address,
    pub price: Price,
    /// (datanet id, weight bps); weights sum to 10_000, or the list is empty.
    pub datanets: Vec<(String, u16)>,
    pub split: FeeSplit,
}

pub fn adapter_id(name: &str) -> B256 {
    keccak256(name.as_bytes())
}

#[derive(Deserialize)]
struct Manifest {
    owner: Address,
    price_per_million_input_tokens: String,
    price_per_million_output_tokens: String,
    #[serde(default)]
    datanets: Vec<ManifestDatanet>,
    fee_split_bps: ManifestSplit,
}

#[derive(Deserialize)]
struct ManifestDatanet {
    id: String,
    weight_bps: u16,
}

#[derive(Deserialize)]
struct ManifestSplit {
    owner: u16,
    contributors: u16,
    operator: u16,
}

fn parse_wei(s: &str, path: &Path, field: &str) -> Result<U256> {
    s.parse::<U256>()
        .map_err(|e| Error::file("manifest.json", path, format!("`{field}`: {e}")))
}

impl AdapterTerms {
    /// Reads and checks `dir/manifest.json`; `Ok(None)` when there is none.
    pub fn from_manifest(name: &str, dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("manifest.json");
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::file("manifest.json", &path, e.to_string()))?;
        let split = FeeSplit {
            owner_bps: m.fee_split_bps.owner,
            contributors_bps: m.fee_split_bps.contributors,
            operator_bps: m.fee_split_bps.operator,
        };
        let bad = |msg: &str| Error::file("manifest.json", &path, msg);
        let sum =
            split.owner_bps as u64 + split.contributors_bps as u64 + split.operator_bps as u64;
        if sum != BPS {
            return Err(bad("fee_split_bps must sum to 10000"));
        }
        let weights: u64 = m.datanets.iter().map(|d| d.weight_bps as u64).sum();
        if (m.datanets.is_empty() && split.contributors_bps != 0)
            || (!m.datanets.is_empty() && weights != BPS)
        {
            return Err(bad(
                "datanets weight_bps must sum to 10000 (or no datanets and no contributors share)",
            ));
        }
        if m.owner == Address::ZERO {
            return Err(bad("owner must not be the zero address"));
        }
        Ok(Some(AdapterTerms {
            name: name.to_string(),
            adapter_id: adapter_id(name),
            owner: m.owner,
            price: Price {
                per_m_input: parse_wei(
                    &m.price_per_million_input_tokens,
                    &path,
                    "price_per_million_input_tokens",
                )?,
                per_m_output: parse_wei(
                    &m.price_per_million_output_tokens,
                    &path,
                    "price_per_million_output_tokens",
                )?,
            },
            datanets: m
                .datanets
                .into_iter()
                .map(|d| (d.id, d.weight_bps))
                .collect(),
            split,
        }))
    }
}

impl AdapterTerms {
    /// Terms as `AdapterRegistry` holds them; datanet ids are named by `datanet_names` (local
    /// file stems) where known, else by their hex id.
    pub fn from_chain(
        name: &str,
        a: &OnChainAdapter,
        datanet_names: &HashMap<B256, String>,
    ) -> Self {
        AdapterTerms {
            name: name.to_string(),
            adapter_id: adapter_id(name),
            owner: a.owner,
            price: Price {
                per_m_input: a.price_per_m_input,
                per_m_output: a.price_per_m_output,
            },
            datanets: a
                .trained_on
                .iter()
                .map(|(id, w)| {
                    let n = datanet_names
                        .get(id)
                        .cloned()
                        .unwrap_or_else(|| id.to_string());
                    (n, *w)
                })
                .collect(),
            split: FeeSplit {
                owner_bps: a.split_bps.0,
                contributors_bps: a.split_bps.1,
                operator_bps: a.split_bps.2,
            },
        }
    }
}

/// The on-chain source of terms.
struct ChainTerms {
    catalog: Arc<AdapterCatalog>,
    /// On-chain datanet id -> local name; the Model Factory adds the datanets it registers.
    datanet_names: RwLock<HashMap<B256, String>>,
}

/// Terms of every adapter served: from chain, or from manifests cached by folder (a re-registered
/// folder keeps its terms).
pub struct PriceBook {
    default_price: Price,
    operator: Address,
    cache: RwLock<HashMap<PathBuf, Arc<AdapterTerms>>>,
    chain: Option<ChainTerms>,
}

impl PriceBook {
    pub fn new(default_price: Price, operator: Address) -> Self {
        PriceBook {
            default_price,
            operator,
            cache: RwLock::default(),
            chain: None,
        }
    }

    /// Takes adapters' terms from `catalog` instead of manifests.
    pub fn with_chain(
        mut self,
        catalog: Arc<AdapterCatalog>,
        datanet_names: HashMap<B256, String>,
    ) -> Self {
        self.chain = Some(ChainTerms {
            catalog,
            datanet_names: RwLock::new(datanet_names),
        });
        self
    }

    /// Names the on-chain datanet `keccak256(name)` `name` (a datanet indexed after start-up).
    pub fn name_datanet(&self, name: &str) {
        if let Some(c) = &self.chain {
            let mut names = c.datanet_names.write().expect("price book");
            names.insert(keccak256(name.as_bytes()), name.to_string());
        }
    }

    fn chain_terms(&self, c: &ChainTerms, name: &str) -> Result<Arc<AdapterTerms>> {
        match c.catalog.cached(crate::chain::onchain_adapter_id(name)) {
            Some(Listing::Registered(a)) if a.active => {
                let names = c.datanet_names.read().expect("price book");
                Ok(Arc::new(AdapterTerms::from_chain(name, &a, &names)))
            }
            Some(Listing::Registered(_)) => Err(Error::AdapterRefused {
                name: name.to_string(),
                reason: "it is deactivated in AdapterRegistry".into(),
            }),
            Some(Listing::Unregistered) => Ok(Arc::new(self.fallback(name))),
            None => Err(Error::Unavailable(format!(
                "the on-chain terms of adapter `{name}` are not known yet (chain unreachable); retry later"
            ))),
        }
    }

    /// Terms for calls to the base model: the default price, all to the operator.
    pub fn base(&self) -> AdapterTerms {
        self.fallback("base")
    }

    fn fallback(&self, name: &str) -> AdapterTerms {
        AdapterTerms {
            name: name.to_string(),
            adapter_id: adapter_id(name),
            owner: self.operator,
            price: self.default_price,
            datanets: vec![],
            split: FeeSplit::OPERATOR_ONLY,
        }
    }

    /// The terms of `adapter` (its manifest, else the default price paid to the operator).
    pub fn terms(&self, adapter: &AdapterRef) -> Result<Arc<AdapterTerms>> {
        let (name, dir) = (adapter.name(), adapter.dir());
        if let Some(c) = &self.chain {
            return self.chain_terms(c, name);
        }
        if let Some(t) = self.cache.read().expect("price book").get(dir) {
            if t.name == name {
                return Ok(t.clone());
            }
        }
        let terms = Arc::new(
            AdapterTerms::from_manifest(name, dir)?.unwrap_or_else(|| self.fallback(name)),
        );
        self.cache
            .write()
            .expect("price book")
            .insert(dir.to_path_buf(), terms.clone());
        Ok(terms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_rounds_up_like_the_contract() {
        let p = Price {
            per_m_input: U256::from(3u64),
            per_m_output: U256::from(1_000_001u64),
        };
        assert_eq!(p.quote(0, 0), U256::ZERO);
        assert_eq!(p.quote(1, 0), U256::from(1u64));
        assert_eq!(p.quote(0, 1), U256::from(2u64));
        assert_eq!(p.quote(1_000_000, 0), U256::from(3u64));
    }

    #[test]
    fn demo_manifests_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("adapters");
        let t = AdapterTerms::from_manifest("french", &root.join("french"))
            .unwrap()
            .unwrap();
        assert_eq!(t.datanets.len(), 2);
        assert_eq!(t.split.owner_bps, 7000);
        assert_eq!(t.price.per_m_output, U256::from(300_000_000_000_000u64));
        assert!(AdapterTerms::from_manifest("x", &root.join("missing"))
            .unwrap()
            .is_none());
    }
}
