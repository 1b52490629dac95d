//! The chain sync task: every refresh interval it applies `AdapterRegistry`'s events to the
//! cached terms (`AdapterCatalog::refresh`; registered adapters never read yet are read) and
//! re-reads every datanet's `recordsRoot` (`DatanetVerifier::verify`). What always holds: a
//! failed read changes nothing (the last answers stay, logged); an adapter whose listing changed
//! is forgotten by the pager (`forget`), so its next page-in is checked against the new listing
//! (e.g. registered on chain after it was first served); the task stops when its handle drops.

use super::datanet_verifier::DatanetVerifier;
use crate::chain::contracts::DatanetRegistry;
use crate::chain::{onchain_adapter_id, AdapterCatalog};
use alloy::primitives::Address;
use std::sync::Arc;
use std::time::Duration;

/// Names of the adapters currently registered (read each round).
pub type AdapterNames = Box<dyn Fn() -> Vec<String> + Send + Sync>;

pub struct ChainSync {
    pub catalog: Arc<AdapterCatalog>,
    pub datanets: Option<Arc<DatanetVerifier>>,
    pub names: AdapterNames,
    /// Drops the paged-in copies of the named adapter.
    pub forget: Box<dyn Fn(&str) + Send + Sync>,
    pub interval: Duration,
}

/// Stops the task when dropped.
pub struct SyncHandle(tokio::task::JoinHandle<()>);

impl Drop for SyncHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ChainSync {
    /// Runs on the current tokio runtime, after a first `round` that found `datanet_registry`.
    pub fn spawn(self, datanet_registry: Option<Address>) -> SyncHandle {
        SyncHandle(tokio::spawn(self.run(datanet_registry)))
    }

    async fn run(self, mut datanet_registry: Option<Address>) {
        loop {
            tokio::time::sleep(self.interval).await;
            self.round(&mut datanet_registry).await;
        }
    }

    /// One refresh; the first successful one also learns the DatanetRegistry's address.
    pub async fn round(&self, datanet_registry: &mut Option<Address>) {
        let names = (self.names)();
        let unread: Vec<_> = names
            .iter()
            .map(|n| onchain_adapter_id(n))
            .filter(|id| self.catalog.cached(*id).is_none())
            .collect();
        if let Err(e) = self.catalog.fetch_many(&unread).await {
            tracing::debug!(error = %e, "AdapterRegistry read failed");
        }
        match self.catalog.refresh().await {
            Ok(changed) => {
                for name in names
                    .iter()
                    .filter(|n| changed.contains(&onchain_adapter_id(n)))
                {
                    tracing::info!(adapter = %name, "on-chain adapter terms changed");
                    (self.forget)(name);
                }
            }
            Err(e) => tracing::warn!(error = %e, "refreshing on-chain adapter terms failed"),
        }
        let Some(verifier) = &self.datanets else {
            return;
        };
        if datanet_registry.is_none() {
            *datanet_registry = self.catalog.datanet_registry().await.ok();
        }
        if let Some(addr) = datanet_registry {
            let registry = DatanetRegistry::new(*addr, self.catalog.provider().clone());
            if let Err(e) = verifier.verify(&registry).await {
                tracing::warn!(error = %e, "reading datanet roots failed");
            }
        }
    }
}
