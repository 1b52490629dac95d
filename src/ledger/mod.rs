//! Metering, Proof of Attribution and batched settlement of every served call.
//!
//! What always holds:
//! - every call that produced tokens (finished, stopped or cancelled) has one `UsageRecord` in the
//!   SQLite ledger (`store`), committed before the final JSON body or SSE chunk is sent, or when
//!   the client goes away (`meter::CallMeter`); a call the server failed (engine panic) is voided:
//!   no record, nothing billed;
//! - a record's receipt leaf is the contract's (`chain::merkle::Receipt::leaf`), its price the
//!   adapter manifest's (`pricing`), its contributor weights from the datanet index
//!   (`attribution`), and its splits sum exactly to its amount (`record`);
//! - a payer is admitted only while its deposit covers unsettled usage plus calls in flight
//!   (`funds`);
//! - batches are written to the ledger before they are sent, settle on chain at most once, and are
//!   recorded with their transaction (`settlement`); records the chain will not settle are
//!   isolated as unsettleable, never blocking later batches (`bisect`, `unsettleable`).

pub mod attribution;
pub mod attribution_bench;
pub mod bisect;
pub mod chain_gate;
pub mod chain_sync;
pub mod config;
pub mod datanet_root;
pub mod datanet_verifier;
pub mod funds;
pub mod meter;
pub mod pricing;
pub mod record;
pub mod settlement;
pub mod store;
mod unsettleable;
pub mod writer;

pub use config::{MeterConfig, MeteringArgs, MeteringFile};
pub use meter::{CallMeter, Meter, Pricing};
pub use record::RequestId;
pub use store::{BatchId, Store};
pub use writer::Commit;

use crate::chain::{AdapterCatalog, Deployment, Settler};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::Tokenizer;
use alloy::primitives::{Address, B256};
use attribution::Datanet;
use datanet_verifier::DatanetVerifier;
use pricing::PriceBook;
use settlement::{SettleConfig, SettlementWorker, WorkerHandle};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Every `*.jsonl` in `dir`, indexed, with its records root (`datanet_root`); the datanet id is
/// the file stem.
pub fn load_datanets(
    dir: &std::path::Path,
    tokenizer: Option<&Tokenizer>,
) -> Result<HashMap<String, (Arc<Datanet>, B256)>> {
    let mut out = HashMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for e in entries.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("jsonl") {
            continue;
        }
        let id = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let started = std::time::Instant::now();
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let root = datanet_root::records_root(&text, &p)?;
        let d = Datanet::from_text(&id, &p, &text, tokenizer)?;
        tracing::info!(datanet = %id, tokens = d.corpus_tokens(), %root, seconds = started.elapsed().as_secs_f64(), "datanet indexed");
        out.insert(id, (Arc::new(d), root));
    }
    Ok(out)
}

/// The `AdapterRegistry` reader when `cfg` names one (contacts nothing yet).
pub fn chain_catalog(cfg: Option<&MeterConfig>) -> Result<Option<Arc<AdapterCatalog>>> {
    let Some(c) = cfg.and_then(|c| c.chain.as_ref()) else {
        return Ok(None);
    };
    let Some(r) = &c.registry else {
        return Ok(None);
    };
    Ok(Some(Arc::new(AdapterCatalog::connect_lazy(
        &c.rpc_url,
        r.adapter_registry,
    )?)))
}

/// Opens the ledger, indexes datanets and connects the settler; the worker (if any) must be
/// spawned inside a tokio runtime with `SettlementWorker::spawn`.
pub async fn open(
    cfg: MeterConfig,
    tokenizer: Option<&Tokenizer>,
    payers: Vec<Address>,
    metrics: Arc<Metrics>,
    catalog: Option<Arc<AdapterCatalog>>,
) -> Result<(Arc<Meter>, Option<WorkerHandle>)> {
    let store = Arc::new(Store::open(&cfg.ledger)?);
    let loaded = match &cfg.datanets_dir {
        Some(d) => load_datanets(d, tokenizer)?,
        None => HashMap::new(),
    };
    let roots: BTreeMap<String, B256> = loaded.iter().map(|(k, (_, r))| (k.clone(), *r)).collect();
    let datanets: HashMap<String, Arc<Datanet>> =
        loaded.into_iter().map(|(k, (d, _))| (k, d)).collect();
    let (settler, operator) = match &cfg.chain {
        Some(c) => {
            let deployment = Deployment {
                settlement: c.settlement,
                adapter_registry: Address::ZERO,
                datanet_registry: Address::ZERO,
            };
            let s = Settler::connect_lazy(&c.rpc_url, &c.operator_key, deployment)?
                .with_receipt_timeout(std::time::Duration::from_secs(20));
            let op = s.signer_address();
            (Some(s), op)
        }
        None => (None, Address::ZERO),
    };
    let funds = match &cfg.chain {
        Some(c) => Some(funds::Funds::restored(
            store.escrows_with_time()?,
            store.unsettled_by_payer()?,
            Some(c.deposit_max_staleness),
        )),
        None => None,
    };
    let mut prices = PriceBook::new(cfg.default_price, operator);
    let mut verifier = None;
    if let Some(catalog) = catalog {
        let names = roots
            .keys()
            .map(|n| (datanet_verifier::onchain_datanet_id(n), n.clone()))
            .collect();
        prices = prices.with_chain(catalog, names);
        verifier = Some(Arc::new(DatanetVerifier::new(roots, metrics.clone())));
    }
    let mut meter = Meter::new(
        store.clone(),
        prices,
        datanets,
        cfg.min_span,
        funds.clone(),
        operator,
        metrics.clone(),
    );
    if let Some(v) = verifier {
        meter = meter.with_datanet_verifier(v);
    }
    let meter = Arc::new(meter);
    let worker = match (settler, cfg.chain, funds) {
        (Some(settler), Some(c), Some(funds)) => {
            let mut w = SettlementWorker::new(
                store,
                meter.writer(),
                funds,
                settler,
                SettleConfig {
                    max_records: c.max_records,
                    interval: c.interval,
                    deposit_refresh: c.deposit_refresh,
                    write_off_after: c.write_off_after,
                    payers,
                    pause_after_submit: c.pause_after_submit,
                },
                metrics,
            );
            // Read deposits before the first request is admitted; with the RPC down, start with
            // the last values the ledger saw and let the worker retry.
            let first =
                tokio::time::timeout(std::time::Duration::from_secs(10), w.refresh_deposits());
            match first.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not read deposits at startup"),
                Err(_) => tracing::warn!("reading deposits at startup timed out"),
            }
            Some(w.spawn())
        }
        _ => None,
    };
    Ok((meter, worker))
}
