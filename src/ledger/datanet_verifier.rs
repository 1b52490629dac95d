//! Datanets checked against `DatanetRegistry.recordsRoot` before they earn attribution.
//!
//! What always holds:
//! - a datanet's local root is computed once from the same file text its index is built from
//!   (`datanet_root`), so what is attributed is what was checked;
//! - a datanet is used for attribution only while its on-chain `recordsRoot` (id
//!   `keccak256(file stem)`) equals the local root; until the first successful read (RPC down)
//!   it is excluded as `unverified`; a mismatch (`root_mismatch`) or no on-chain datanet
//!   (`not_on_chain`) excludes it, with a log line when its state changes and the gauge
//!   `openlora_datanet_excluded{datanet,reason}` = 1 while excluded;
//! - `verify` re-reads every root, so `updateRecordsRoot` on chain is seen within one refresh.

use crate::chain::contracts::DatanetRegistry::{DatanetRegistryErrors, DatanetRegistryInstance};
use crate::chain::ChainError;
use crate::metrics::Metrics;
use alloy::primitives::{keccak256, B256};
use alloy::providers::DynProvider;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

pub struct DatanetVerifier {
    /// Local records root per datanet id (file stem); the Model Factory adds its datanets.
    roots: RwLock<BTreeMap<String, B256>>,
    /// Excluded datanets and why.
    excluded: RwLock<HashMap<String, &'static str>>,
    metrics: Arc<Metrics>,
}

/// The on-chain id of datanet `name` (its file stem).
pub fn onchain_datanet_id(name: &str) -> B256 {
    keccak256(name.as_bytes())
}

impl DatanetVerifier {
    /// Every datanet starts excluded as `unverified` until `verify` reads its root.
    pub fn new(roots: BTreeMap<String, B256>, metrics: Arc<Metrics>) -> Self {
        let v = DatanetVerifier {
            excluded: RwLock::new(HashMap::new()),
            roots: RwLock::new(BTreeMap::new()),
            metrics,
        };
        for (id, root) in roots {
            v.add(&id, root, None);
        }
        v
    }

    /// Checks datanet `id` (local root `root`) from now on: included if `onchain` (its
    /// `recordsRoot` as just read) equals `root`, else excluded until `verify` says otherwise.
    pub fn add(&self, id: &str, root: B256, onchain: Option<B256>) {
        self.roots
            .write()
            .expect("datanets")
            .insert(id.to_string(), root);
        self.judge(id, root, onchain);
    }

    fn judge(&self, id: &str, root: B256, onchain: Option<B256>) {
        match onchain {
            Some(r) if r == root => self.set(id, None, ""),
            Some(r) => self.set(
                id,
                Some("root_mismatch"),
                &format!("its records hash to root {root}, DatanetRegistry has {r}"),
            ),
            None => self.set(
                id,
                Some("unverified"),
                "not yet checked against its on-chain recordsRoot",
            ),
        }
    }

    /// Why datanet `id` is excluded from attribution, if it is.
    pub fn excluded(&self, id: &str) -> Option<&'static str> {
        self.excluded.read().expect("datanets").get(id).copied()
    }

    fn set(&self, id: &str, reason: Option<&'static str>, detail: &str) {
        let mut ex = self.excluded.write().expect("datanets");
        let before = ex.get(id).copied();
        if before == reason && before.is_some() {
            return;
        }
        if let Some(old) = before {
            let _ = self
                .metrics
                .datanet_excluded
                .remove_label_values(&[id, old]);
        }
        match reason {
            Some(r) => {
                ex.insert(id.to_string(), r);
                self.metrics
                    .datanet_excluded
                    .with_label_values(&[id, r])
                    .set(1);
                tracing::warn!(datanet = %id, reason = r, "datanet excluded from attribution: {detail}");
            }
            None => {
                ex.remove(id);
                if before.is_some() {
                    tracing::info!(datanet = %id, "datanet verified against its on-chain recordsRoot");
                }
            }
        }
    }

    /// Reads every datanet's `recordsRoot` and includes or excludes it. An RPC error leaves the
    /// datanets not yet read as they were and is returned.
    pub async fn verify(
        &self,
        registry: &DatanetRegistryInstance<DynProvider>,
    ) -> Result<(), ChainError> {
        let roots = self.roots.read().expect("datanets").clone();
        for (id, local) in &roots {
            match registry.getDatanet(onchain_datanet_id(id)).call().await {
                Ok(d) => self.judge(id, *local, Some(d.recordsRoot)),
                Err(e) => match e.as_decoded_interface_error::<DatanetRegistryErrors>() {
                    Some(DatanetRegistryErrors::UnknownDatanet(_)) => self.set(
                        id,
                        Some("not_on_chain"),
                        &format!("no datanet {} in DatanetRegistry", onchain_datanet_id(id)),
                    ),
                    _ => return Err(ChainError::from_contract(e)),
                },
            }
        }
        Ok(())
    }
}
