//! The settlement worker: a tokio task that turns ledger records into `Settlement.settleBatch`
//! transactions.
//!
//! What always holds:
//! - a batch is the oldest unbatched records (at most `max_records`), taken when there are
//!   `max_records` of them or the oldest is `interval` old; its id is
//!   `keccak256("openlora.batch" ++ operator ++ leaves in order)`, deterministic;
//! - the batch (id, root, debits, credits) and its records' membership are committed to the
//!   ledger BEFORE the transaction is sent; after a crash the worker finds the batch `pending`,
//!   asks the chain (`batchSettled`) and either records the landed transaction (found from the
//!   `BatchSettled` event) or resubmits the same id, so a batch is never charged twice;
//! - credits = the records' gross splits scaled to `total - protocol_fee(total, bps)` (floor per
//!   recipient, the rounding remainder to the operator), so the contract's sum check holds exactly;
//!   a fee change before landing makes the worker recompute credits for the same id;
//! - RPC errors are retried with exponential backoff (1 s .. 30 s); serving never waits on them;
//!   while backing off after a transport error the RPC is probed every second, and once it
//!   answers the worker re-reads the payers' deposits in its next round (admissions stop being
//!   503 within about a second of the chain's return, not at the end of the backoff);
//! - a batch is simulated before it is written; records that revert alone are marked
//!   unsettleable (`bisect`), and a pending batch the chain rejects is dissolved and its records
//!   re-checked, so one bad record never blocks later batches; an unsettleable record is
//!   re-simulated at every deposit refresh and ends retried (once it would settle) or written off
//!   (after `write_off_after`), never both;
//! - nonces come from the node's pending count for every transaction (see `chain::Settler`);
//! - after the chain was unreachable, the batches recorded settled in the [`RECHECK_WINDOW`]
//!   before the outage are asked again (`batchSettled`): a node restarted from an older state
//!   (or a reorg) may have lost a transaction whose receipt we recorded; such a batch goes back
//!   to `pending` (its debits unsettled again) and is resubmitted with the same id.

use super::bisect::{blames_records, build_batch, split_settleable, to_chain};
use super::funds::Funds;
use super::store::{BatchId, SettledInfo, Store, StoredBatch, UnbatchedRow};
use super::writer::Writer;
use crate::chain::{protocol_fee, ChainError, Settler};
use crate::clock::unix_now;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use alloy::primitives::{keccak256, Address, B256, U256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct SettleConfig {
    /// Records per batch (and the count that triggers one).
    pub max_records: usize,
    /// Settle whatever is pending once the oldest record is this old.
    pub interval: Duration,
    /// How often payers' escrow is re-read from chain (and open unsettleable records re-checked).
    pub deposit_refresh: Duration,
    /// How long an unsettleable record may wait for a retry before it is written off.
    pub write_off_after: Duration,
    /// Payers whose escrow is tracked.
    pub payers: Vec<Address>,
    /// Test hook: after a batch's transaction succeeds, print a line and stop working (the test
    /// then kills the process) before the ledger records it as settled.
    pub pause_after_submit: bool,
}

pub struct SettlementWorker {
    /// Read here; written through `writer`.
    store: Arc<Store>,
    writer: Arc<Writer>,
    funds: Arc<Funds>,
    settler: Settler,
    cfg: SettleConfig,
    metrics: Arc<Metrics>,
    last_refresh: Option<Instant>,
    /// Set by a transport error: re-check the batches settled since this unix time.
    recheck_from: Option<u64>,
}

/// Stops the worker task when dropped.
pub struct WorkerHandle(tokio::task::JoinHandle<()>);

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// (address, wei) pairs: a batch's debits or credits.
pub type Amounts = Vec<(Address, U256)>;

/// How often the RPC is probed while the worker backs off after an error.
const RECOVERY_PROBE: Duration = Duration::from_secs(1);

/// How far before an outage settled batches are re-checked once the chain answers again.
pub const RECHECK_WINDOW: Duration = Duration::from_secs(120);

pub fn batch_id(operator: Address, leaves: &[B256]) -> BatchId {
    let mut bytes = b"openlora.batch".to_vec();
    bytes.extend_from_slice(operator.as_slice());
    for l in leaves {
        bytes.extend_from_slice(l.as_slice());
    }
    BatchId(keccak256(bytes))
}

/// Debits per payer and credits per recipient of `rows` under fee `bps` (sorted by address).
pub fn batch_amounts(rows: &[UnbatchedRow], bps: u16, operator: Address) -> (Amounts, Amounts) {
    let mut debits: BTreeMap<Address, U256> = BTreeMap::new();
    let mut gross: BTreeMap<Address, U256> = BTreeMap::new();
    for r in rows {
        *debits.entry(r.payer).or_default() += r.amount;
        for (who, x) in &r.splits {
            *gross.entry(*who).or_default() += *x;
        }
    }
    (
        debits.into_iter().collect(),
        scale_credits(&gross, bps, operator),
    )
}

fn scale_credits(
    gross: &BTreeMap<Address, U256>,
    bps: u16,
    operator: Address,
) -> Vec<(Address, U256)> {
    let total: U256 = gross.values().copied().sum();
    let net = total - protocol_fee(total, bps);
    let mut credits: BTreeMap<Address, U256> = BTreeMap::new();
    if !total.is_zero() {
        for (who, g) in gross {
            credits.insert(*who, *g * net / total);
        }
    }
    let given: U256 = credits.values().copied().sum();
    *credits.entry(operator).or_default() += net - given;
    credits.into_iter().filter(|(_, x)| !x.is_zero()).collect()
}

fn chain_err(e: ChainError) -> Error {
    Error::Chain(e)
}

impl SettlementWorker {
    pub fn new(
        store: Arc<Store>,
        writer: Arc<Writer>,
        funds: Arc<Funds>,
        settler: Settler,
        cfg: SettleConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        SettlementWorker {
            store,
            writer,
            funds,
            settler,
            cfg,
            metrics,
            last_refresh: None,
            recheck_from: None,
        }
    }

    pub fn spawn(self) -> WorkerHandle {
        WorkerHandle(tokio::spawn(self.run()))
    }

    async fn run(mut self) {
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.tick().await {
                Ok(worked) => {
                    backoff = Duration::from_secs(1);
                    if !worked {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                Err(e) => backoff = self.back_off(&e, backoff).await,
            }
            self.update_gauges();
        }
    }

    /// Counts the failure and waits before the next round; returns the next backoff. After a
    /// transport error the wait ends as soon as the RPC answers, and the next round re-reads the
    /// deposits first thing.
    async fn back_off(&mut self, e: &Error, backoff: Duration) -> Duration {
        let reason = match e {
            Error::Chain(ChainError::Rpc(_)) => "rpc",
            Error::Chain(_) => "chain",
            _ => "ledger",
        };
        self.metrics
            .settlement_failures
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(error = %e, retry_in = ?backoff, "settlement failed");
        let next = (backoff * 2).min(Duration::from_secs(30));
        if reason != "rpc" {
            tokio::time::sleep(backoff).await;
            return next;
        }
        let from = unix_now().saturating_sub(RECHECK_WINDOW.as_secs());
        self.recheck_from = Some(self.recheck_from.map_or(from, |t| t.min(from)));
        if self.wait_for_rpc(backoff).await {
            tracing::info!("the chain answers again; re-reading deposits");
            self.last_refresh = None;
            return Duration::from_secs(1);
        }
        next
    }

    /// Sleeps `backoff`, probing the RPC every `RECOVERY_PROBE`; true when it answered before
    /// the end (the worker then retries at once instead of sleeping out the backoff).
    async fn wait_for_rpc(&self, backoff: Duration) -> bool {
        use alloy::providers::Provider;
        let until = Instant::now() + backoff;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            tokio::time::sleep(left.min(RECOVERY_PROBE)).await;
            let probe = self.settler.provider().get_block_number();
            if matches!(tokio::time::timeout(RECOVERY_PROBE, probe).await, Ok(Ok(_))) {
                return Instant::now() < until;
            }
        }
    }

    fn update_gauges(&self) {
        if let Ok((n, oldest)) = self.store.unsettled_stats() {
            self.metrics.ledger_unsettled.set(n as i64);
            let lag = oldest.map_or(0, |t| unix_now().saturating_sub(t));
            self.metrics.settlement_lag.set(lag as f64);
        }
    }

    /// One round: finish pending batches, refresh deposits (when due, and first thing after an
    /// outage), maybe settle a new batch.
    async fn tick(&mut self) -> Result<bool> {
        let mut worked = false;
        if let Some(from) = self.recheck_from {
            self.recheck_settled(from).await?;
            self.recheck_from = None;
        }
        for b in self.store.pending_batches()? {
            self.settle(b).await?;
            worked = true;
        }
        if self
            .last_refresh
            .is_none_or(|t| t.elapsed() >= self.cfg.deposit_refresh)
        {
            self.refresh_deposits().await?;
            self.resolve_unsettleable().await?;
        }
        if let Some(b) = self.next_batch().await? {
            self.settle(b).await?;
            worked = true;
        }
        Ok(worked)
    }

    /// Re-reads each payer's escrow; an amount the payer asked to withdraw counts as gone (the
    /// server stops spending it as soon as it sees the request, as contracts/README.md asks).
    pub async fn refresh_deposits(&mut self) -> Result<()> {
        let s = self.settler.settlement();
        for p in &self.cfg.payers {
            let escrow = self.settler.balances(*p).await.map_err(chain_err)?.escrow;
            let leaving = s
                .pendingWithdrawal(crate::chain::NATIVE, *p)
                .call()
                .await
                .map_err(|e| chain_err(ChainError::from_contract(e)))?
                .amount;
            let leaving = U256::from_be_slice(&leaving.to_be_bytes::<24>());
            let escrow = escrow.saturating_sub(leaving);
            self.funds.set_escrow(*p, escrow);
            let p = *p;
            self.writer
                .write(move |s| s.set_escrow(p, escrow, unix_now()))
                .await?;
        }
        self.last_refresh = Some(Instant::now());
        Ok(())
    }

    async fn next_batch(&self) -> Result<Option<StoredBatch>> {
        let (count, oldest) = self.store.unbatched_stats()?;
        let Some(oldest) = oldest else {
            return Ok(None);
        };
        let due = unix_now().saturating_sub(oldest) >= self.cfg.interval.as_secs();
        if (count as usize) < self.cfg.max_records && !due {
            return Ok(None);
        }
        let rows = self.store.unbatched(self.cfg.max_records)?;
        let bps = self.settler.protocol_fee_bps().await.map_err(chain_err)?;
        let split = split_settleable(&self.settler, rows, bps)
            .await
            .map_err(chain_err)?;
        for (row, e) in split.unsettleable {
            self.mark_unsettleable(&row, &e).await?;
        }
        if split.settle.is_empty() {
            return Ok(None);
        }
        let rows = split.settle;
        let b = build_batch(&rows, bps, self.settler.signer_address());
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let batch = b.clone();
        self.writer
            .write(move |s| s.create_batch(&batch, &seqs, unix_now()))
            .await?;
        self.metrics
            .settlement_batch_calls
            .observe(rows.len() as f64);
        Ok(Some(b))
    }

    /// Gives each open unsettleable record its end: retried (batched again) once it would settle
    /// alone (its cause went, e.g. the payer deposited again), or written off once it has waited
    /// `write_off_after` since it was marked (released from its payer's debt). Never both: each
    /// ledger update applies only to a record still open.
    async fn resolve_unsettleable(&self) -> Result<()> {
        let open = self.store.open_unsettleable()?;
        if open.is_empty() {
            return Ok(());
        }
        let now = unix_now();
        let marked: BTreeMap<i64, u64> = open.iter().map(|(r, at)| (r.seq, *at)).collect();
        let rows = open.into_iter().map(|(r, _)| r).collect();
        let bps = self.settler.protocol_fee_bps().await.map_err(chain_err)?;
        let split = split_settleable(&self.settler, rows, bps)
            .await
            .map_err(chain_err)?;
        for row in split.settle {
            let seq = row.seq;
            if self
                .writer
                .write(move |s| s.retry_unsettleable(seq))
                .await?
            {
                tracing::info!(record = seq, payer = %row.payer, "unsettleable record settles now; retried");
                self.outcome("retried");
            }
        }
        let due = |seq: i64| now.saturating_sub(marked[&seq]) >= self.cfg.write_off_after.as_secs();
        for (row, e) in split.unsettleable.into_iter().filter(|(r, _)| due(r.seq)) {
            let seq = row.seq;
            if self.writer.write(move |s| s.write_off(seq, now)).await? {
                tracing::warn!(record = seq, payer = %row.payer, amount = %row.amount, error = %e, "unsettleable record written off");
                self.funds.written_off(row.payer, row.amount);
                self.outcome("written_off");
            }
        }
        Ok(())
    }

    fn outcome(&self, outcome: &str) {
        self.metrics
            .unsettleable_outcomes
            .with_label_values(&[outcome])
            .inc();
    }

    /// Record `row` as never settleable: it reverts alone (`e`).
    async fn mark_unsettleable(&self, row: &UnbatchedRow, e: &ChainError) -> Result<()> {
        let label = e.revert_label().unwrap_or_else(|| "revert".into());
        let reason = format!("{label}: {e}");
        tracing::warn!(record = row.seq, payer = %row.payer, amount = %row.amount, %reason, "record isolated as unsettleable");
        self.metrics
            .settlement_failures
            .with_label_values(&[&label])
            .inc();
        let seq = row.seq;
        self.writer
            .write(move |s| s.mark_unsettleable(seq, &reason, unix_now()))
            .await
    }

    /// The chain rejected pending batch `b` (a revert, not a transport error): its records go
    /// back to the unbatched pool, where the next round's simulation isolates the culprits.
    async fn dissolve(&self, b: &StoredBatch, e: &ChainError) -> Result<()> {
        let label = e.revert_label().unwrap_or_else(|| "revert".into());
        tracing::warn!(batch = %b.id.0, error = %e, "batch rejected by the chain; dissolved, its records are re-checked");
        self.metrics
            .settlement_failures
            .with_label_values(&[&label])
            .inc();
        let id = b.id;
        self.writer.write(move |s| s.dissolve_batch(id)).await
    }

    /// Lands a pending batch exactly once.
    async fn settle(&self, mut b: StoredBatch) -> Result<()> {
        if self
            .settler
            .batch_settled(b.id.0)
            .await
            .map_err(chain_err)?
        {
            return self.recover(&b).await;
        }
        let bps = self.settler.protocol_fee_bps().await.map_err(chain_err)?;
        if bps != b.fee_bps {
            let mut gross: BTreeMap<Address, U256> = BTreeMap::new();
            // Recompute from the stored credits' own rows: the records keep their gross splits.
            for r in self.store.batch_rows(b.id)? {
                for (who, x) in r.splits {
                    *gross.entry(who).or_default() += x;
                }
            }
            b.credits = scale_credits(&gross, bps, self.settler.signer_address());
            b.fee_bps = bps;
            let (id, credits) = (b.id, b.credits.clone());
            self.writer
                .write(move |s| s.update_credits(id, bps, &credits))
                .await?;
        }
        match self.settler.settle_batch(&to_chain(&b)).await {
            Ok(s) => {
                if self.cfg.pause_after_submit {
                    eprintln!(
                        "openlora: batch {} submitted, pausing before recording it",
                        b.id.0
                    );
                    std::future::pending::<()>().await;
                }
                self.finish(
                    &b,
                    SettledInfo {
                        tx_hash: s.tx_hash,
                        block_number: s.block_number,
                        gas_used: s.gas_used,
                    },
                )
                .await
            }
            Err(ChainError::BatchAlreadySettled(_)) => self.recover(&b).await,
            Err(e) if blames_records(&e) => self.dissolve(&b, &e).await,
            Err(e) => Err(chain_err(e)),
        }
    }

    /// Puts back to `pending` every batch recorded settled since `from` that the chain does not
    /// have (see the module header); the next round resubmits it.
    async fn recheck_settled(&self, from: u64) -> Result<()> {
        for b in self.store.settled_since(from)? {
            if self
                .settler
                .batch_settled(b.id.0)
                .await
                .map_err(chain_err)?
            {
                continue;
            }
            tracing::warn!(batch = %b.id.0, "a settled batch is not on chain any more; resubmitting it");
            let id = b.id;
            self.writer.write(move |s| s.reopen_batch(id)).await?;
            for (payer, debit) in &b.debits {
                self.funds.reopened(*payer, *debit);
            }
        }
        Ok(())
    }

    /// The batch is on chain but not recorded: find its transaction and record it.
    async fn recover(&self, b: &StoredBatch) -> Result<()> {
        let s = self.settler.settlement();
        let ev = s.BatchSettled_filter().topic1(b.id.0).from_block(0u64);
        let logs = ev
            .query()
            .await
            .map_err(|e| chain_err(ChainError::from_contract(e)))?;
        let Some((_, log)) = logs.into_iter().next() else {
            // A node restarted from a state dump may have no history: the batch is on chain
            // (batchSettled), only its transaction is unknown.
            tracing::warn!(batch = %b.id.0, "batch is on chain but its BatchSettled event is not found");
            return self
                .finish(
                    b,
                    SettledInfo {
                        tx_hash: B256::ZERO,
                        block_number: None,
                        gas_used: 0,
                    },
                )
                .await;
        };
        let tx_hash = log.transaction_hash.unwrap_or_default();
        use alloy::providers::Provider;
        let gas_used = self
            .settler
            .provider()
            .get_transaction_receipt(tx_hash)
            .await
            .map_err(|e| chain_err(ChainError::Rpc(e.to_string())))?
            .map_or(0, |r| r.gas_used);
        tracing::info!(batch = %b.id.0, tx = %tx_hash, "batch was already on chain; recorded");
        self.finish(
            b,
            SettledInfo {
                tx_hash,
                block_number: log.block_number,
                gas_used,
            },
        )
        .await
    }

    async fn finish(&self, b: &StoredBatch, s: SettledInfo) -> Result<()> {
        let id = b.id;
        self.writer
            .write(move |st| st.mark_settled(id, s, unix_now()))
            .await?;
        for (payer, debit) in &b.debits {
            self.funds.settled(*payer, *debit);
        }
        self.metrics.settlement_batches.inc();
        self.metrics.settlement_gas.inc_by(s.gas_used);
        tracing::info!(batch = %b.id.0, calls = b.call_count, gas = s.gas_used, "batch settled");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_plus_fee_equal_debits() {
        let op = Address::repeat_byte(0xEE);
        let rows: Vec<UnbatchedRow> = (0..7u64)
            .map(|i| UnbatchedRow {
                seq: i as i64,
                payer: Address::repeat_byte((i % 3) as u8 + 1),
                amount: U256::from(1000 + 37 * i),
                leaf: B256::ZERO,
                splits: vec![
                    (Address::repeat_byte(0xA0), U256::from(700 + 30 * i)),
                    (
                        Address::repeat_byte(0xC0 + (i % 2) as u8),
                        U256::from(200 + 7 * i),
                    ),
                    (op, U256::from(100u64)),
                ],
                created_at: 0,
            })
            .collect();
        for bps in [0u16, 1, 250, 1000] {
            let (debits, credits) = batch_amounts(&rows, bps, op);
            let total: U256 = debits.iter().map(|(_, x)| *x).sum();
            let credited: U256 = credits.iter().map(|(_, x)| *x).sum();
            assert_eq!(credited + protocol_fee(total, bps), total, "bps {bps}");
            assert_eq!(debits.len(), 3);
        }
    }
}
