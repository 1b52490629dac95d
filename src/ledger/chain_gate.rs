//! `ChainGate`: the adapter integrity gate backed by the on-chain `AdapterRegistry`.
//!
//! What always holds:
//! - an adapter registered on chain is served only while it is active and only with files whose
//!   weights hash (`lora::weights_hash`) equals its registered `weightsHash`;
//! - an adapter with no on-chain registration is served only without `--require-onchain-adapters`;
//! - at registration the chain is read fresh (the cache answers when the RPC is down, and an
//!   adapter never read may register: its page-in decides); at page-in the cache, kept fresh by
//!   the chain sync task, answers, and an adapter never read is not served (503) until it is;
//! - every refusal is counted in `openlora_adapter_refusals_total{reason}` and logged.

use crate::chain::{onchain_adapter_id, AdapterCatalog, Listing};
use crate::error::{Error, Result};
use crate::lora::{AdapterGate, Expected, GateStage};
use crate::metrics::Metrics;
use alloy::primitives::B256;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a registration waits for the chain before deciding from the cache.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed read, registrations decide from the cache for this long (so registering
/// thousands of adapters with the RPC down does not wait on it for each).
const UNREACHABLE_PAUSE: Duration = Duration::from_secs(10);

pub struct ChainGate {
    catalog: Arc<AdapterCatalog>,
    runtime: tokio::runtime::Handle,
    require_onchain: bool,
    metrics: Arc<Metrics>,
    unreachable_until: Mutex<Option<Instant>>,
}

impl ChainGate {
    /// `runtime` runs the chain reads of registrations and page-ins (which happen on blocking
    /// threads, never on its workers).
    pub fn new(
        catalog: Arc<AdapterCatalog>,
        runtime: tokio::runtime::Handle,
        require_onchain: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        ChainGate {
            catalog,
            runtime,
            require_onchain,
            metrics,
            unreachable_until: Mutex::new(None),
        }
    }

    fn fetch(&self, id: B256) -> Option<Listing> {
        let paused = self.unreachable_until.lock().expect("gate");
        if paused.is_some_and(|t| Instant::now() < t) {
            return self.catalog.cached(id);
        }
        drop(paused);
        let catalog = self.catalog.clone();
        let read = self
            .runtime
            .block_on(async move { tokio::time::timeout(FETCH_TIMEOUT, catalog.fetch(id)).await });
        match read {
            Ok(Ok(l)) => Some(l),
            failed => {
                if let Ok(Err(e)) = failed {
                    tracing::warn!(error = %e, "reading AdapterRegistry failed");
                }
                *self.unreachable_until.lock().expect("gate") =
                    Some(Instant::now() + UNREACHABLE_PAUSE);
                self.catalog.cached(id)
            }
        }
    }

    fn refuse(&self, name: &str, reason: &'static str, message: String) -> Error {
        self.metrics
            .adapter_refusals
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(adapter = %name, reason, "adapter refused: {message}");
        Error::AdapterRefused {
            name: name.to_string(),
            reason: message,
        }
    }
}

impl AdapterGate for ChainGate {
    fn expected(&self, name: &str, stage: GateStage) -> Result<Expected> {
        let id = onchain_adapter_id(name);
        let listing = match stage {
            GateStage::Register => self.fetch(id),
            GateStage::PageIn | GateStage::StartUp => {
                self.catalog.cached(id).or_else(|| self.fetch(id))
            }
        };
        match listing {
            Some(Listing::Registered(a)) if a.active => Ok(Expected::Hash(a.weights_hash)),
            Some(Listing::Registered(_)) => Err(self.refuse(
                name,
                "inactive",
                "it is deactivated in AdapterRegistry".into(),
            )),
            Some(Listing::Unregistered) if self.require_onchain => Err(self.refuse(
                name,
                "unregistered",
                format!("it has no registration in AdapterRegistry (id {id}) and --require-onchain-adapters is set"),
            )),
            Some(Listing::Unregistered) => Ok(Expected::Any),
            None if stage != GateStage::PageIn => Ok(Expected::Any),
            None => Err(Error::Unavailable(format!(
                "adapter `{name}` cannot be verified against AdapterRegistry now (chain unreachable); retry later"
            ))),
        }
    }

    fn mismatch(&self, name: &str, expected: B256, actual: B256) {
        self.metrics
            .adapter_refusals
            .with_label_values(&["hash_mismatch"])
            .inc();
        tracing::warn!(adapter = %name, %expected, %actual, "adapter weights do not match their on-chain weightsHash");
    }
}
