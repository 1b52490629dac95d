//! On-chain registration of a finished job, when the server has the on-chain registry
//! (`--adapter-registry-address`): the job's datanet goes into `DatanetRegistry` (id
//! `keccak256(datanet id)`, the records root of its datanet file, each contributor with one share
//! per record) and its adapter into `AdapterRegistry` (id `keccak256(adapter name)`, the weights
//! hash of the installed `adapter_model.safetensors`, the job's owner, prices and fee split,
//! trained on that one datanet at 10,000 bps), signed with the operator key.
//!
//! The state machine (a job without a `datanet` has no owner or terms and is not registered):
//! trained → adapter folder installed whole (not served) → datanet and adapter registered on
//! chain → served → `succeeded`. What always holds:
//! - the adapter is served only after the chain holds it, so the chain gate checks the served
//!   files against the registered weights hash and calls are priced and split by the chain's
//!   terms from the first one;
//! - registration is idempotent (`chain::registrar`): a resumed or restarted job, or a retry after
//!   a transaction that did land, registers nothing twice;
//! - a transient failure (RPC down, transaction not landed) never loses the adapter: the job stays
//!   `running` with an event per failure and retries with back-off until it is registered or
//!   cancelled (a restart resumes it from its last checkpoint, the adapter then being rebuilt and
//!   registration retried); a permanent one (the ids taken on chain with other terms, a revert)
//!   fails the job naming the conflict, its adapter folder left on disk, never served. (The
//!   settlement worker signs with the same key; a nonce clash between the two is a transient
//!   RPC error, retried here and by the worker.)

use super::store::JobRow;
use super::{Factory, JobStatus};
use crate::chain::{
    AdapterEntry, ChainError, DatanetEntry, OnChainAdapter, Registrar, Registration,
};
use crate::error::{Error, Result};
use crate::ledger::datanet_root::records_root;
use crate::lora::{weights_hash, WEIGHTS_FILE};
use alloy::primitives::{keccak256, Address, U256};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The factory's way to the chain.
pub struct FactoryChain {
    pub registrar: Arc<Registrar>,
    /// Runs the chain calls (the factory's threads are not the runtime's).
    pub runtime: tokio::runtime::Handle,
}

/// Longest one registration attempt may take (a job's deployment; a start-up re-check).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
const RECHECK_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// What to register for a job: (datanet, adapter).
fn entries(
    job: &JobRow,
    name: &str,
    adapter_dir: &Path,
    datanet_text: &str,
) -> Result<(DatanetEntry, AdapterEntry)> {
    let d =
        job.spec.datanet.as_ref().ok_or_else(|| {
            Error::Internal("a job without a datanet has no on-chain terms".into())
        })?;
    let mut shares: BTreeMap<Address, u64> = BTreeMap::new();
    for line in datanet_text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::Internal(format!("datanet file: {e}")))?;
        if let Some(who) = v["contributor"].as_str().and_then(|a| a.parse().ok()) {
            *shares.entry(who).or_default() += 1;
        }
    }
    let datanet = DatanetEntry {
        name: d.id.clone(),
        records_root: records_root(datanet_text, Path::new(&d.id))?,
        contributors: shares
            .into_iter()
            .map(|(a, n)| (a, U256::from(n)))
            .collect(),
    };
    let weights = adapter_dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights).map_err(|e| Error::io(&weights, e))?;
    let wei = |s: &str| -> Result<U256> {
        s.parse()
            .map_err(|_| Error::Internal(format!("price `{s}` is not wei")))
    };
    let terms = OnChainAdapter {
        owner: d
            .owner
            .parse()
            .map_err(|_| Error::Internal(format!("owner `{}` is not an address", d.owner)))?,
        active: true,
        weights_hash: weights_hash(&bytes),
        price_per_m_input: wei(&d.price_per_million_input_tokens)?,
        price_per_m_output: wei(&d.price_per_million_output_tokens)?,
        split_bps: (d.fee_split_bps[0], d.fee_split_bps[1], d.fee_split_bps[2]),
        trained_on: vec![(keccak256(d.id.as_bytes()), 10_000)],
    };
    let adapter = AdapterEntry {
        name: name.to_string(),
        terms,
    };
    Ok((datanet, adapter))
}

fn describe(what: &str, r: Registration) -> String {
    match r {
        Registration::Sent(tx) => format!("{what} registered on chain (transaction {tx})"),
        Registration::AlreadyThere => format!("{what} already registered on chain"),
    }
}

impl Factory {
    /// One attempt: the datanet, then the adapter.
    fn register_once(
        &self,
        c: &FactoryChain,
        d: &DatanetEntry,
        a: &AdapterEntry,
        limit: Duration,
    ) -> std::result::Result<(Registration, Registration), ChainError> {
        let r = c.registrar.clone();
        let attempt = async move {
            let dn = r.ensure_datanet(d).await?;
            let ad = r.ensure_adapter(a).await?;
            Ok::<_, ChainError>((dn, ad))
        };
        let (dn, ad) = c
            .runtime
            .block_on(async { tokio::time::timeout(limit, attempt).await })
            .map_err(|_| ChainError::Rpc(format!("no answer within {limit:?}")))??;
        Ok((dn, ad))
    }

    /// Registers `job`'s datanet and adapter (installed in `adapter_dir`) on chain, if the server
    /// has the registry and the job names a datanet. With `retry`, transient failures are retried
    /// while the job is `running`; `Ok(false)` when it stopped running meanwhile (cancelled).
    pub(super) fn register_on_chain(
        &self,
        job: &JobRow,
        name: &str,
        adapter_dir: &Path,
        retry: bool,
    ) -> Result<bool> {
        let (Some(c), Some(d)) = (&self.opts.chain, &job.spec.datanet) else {
            return Ok(true);
        };
        let text = std::fs::read_to_string(self.datanet_path(&d.id))
            .map_err(|e| Error::io(self.datanet_path(&d.id), e))?;
        let (dn, ad) = entries(job, name, adapter_dir, &text)?;
        let mut wait = FIRST_RETRY;
        let (dn_done, ad_done) = loop {
            let limit = if retry {
                ATTEMPT_TIMEOUT
            } else {
                RECHECK_TIMEOUT
            };
            match self.register_once(c, &dn, &ad, limit) {
                Ok(done) => break done,
                Err(e) if retry && e.is_transient() => {
                    let m = format!(
                        "On-chain registration failed, retrying in {} s: {e}",
                        wait.as_secs()
                    );
                    self.event(&job.id, "message", &m, None);
                    tracing::warn!(job = %job.id, error = %e, "on-chain registration of a fine-tuned adapter");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(MAX_RETRY);
                    let running = self
                        .store
                        .job(&job.id)?
                        .is_some_and(|j| j.status == JobStatus::Running);
                    if !running {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(Error::Chain(e)),
            }
        };
        // A succeeded job re-checked at start-up gets no new events.
        if retry {
            let dn_msg = describe(&format!("Datanet {}", dn.name), dn_done);
            self.event(&job.id, "message", &dn_msg, None);
            let ad_msg = describe(&format!("Adapter {}", ad.name), ad_done);
            self.event(&job.id, "message", &ad_msg, None);
        }
        let root = dn.records_root;
        if let Some(v) = self
            .meter
            .as_ref()
            .and_then(|m| m.datanet_verifier.as_ref())
        {
            v.add(&d.id, root, Some(root));
        }
        Ok(true)
    }

    /// After a restart: a succeeded job's registrations, checked (and made if missing) once,
    /// while `reachable`; a failure clears `reachable` (the other jobs are not waited on) and
    /// leaves the datanet `unverified` for the chain sync to check.
    pub(super) fn recheck_on_chain(
        &self,
        job: &JobRow,
        name: &str,
        adapter_dir: &Path,
        reachable: &mut bool,
    ) {
        if *reachable {
            match self.register_on_chain(job, name, adapter_dir, false) {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "on-chain registration of a fine-tuned adapter not checked");
                    *reachable = false;
                }
            }
        }
        let verifier = self
            .meter
            .as_ref()
            .and_then(|m| m.datanet_verifier.as_ref());
        if let (Some(d), Some(v)) = (&job.spec.datanet, verifier) {
            let text = std::fs::read_to_string(self.datanet_path(&d.id));
            if let Ok(root) =
                text.and_then(|t| records_root(&t, Path::new(&d.id)).map_err(std::io::Error::other))
            {
                v.add(&d.id, root, None);
            }
        }
    }
}
