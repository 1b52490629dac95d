//! The durable ledger: one SQLite file in WAL mode with `synchronous = FULL`, so a record is on
//! disk when `insert`/`insert_all` returns and survives `kill -9`. In the server every write
//! goes through the one ledger writer thread (`writer`; usage records a group per transaction).
//! Tables: `usage` (one row per metered call), `batches` (settlement batches, written before they
//! are submitted), `payers` (last known on-chain escrow). Amounts are decimal strings of wei, hashes and addresses 0x-hex.
//!
//! What always holds: a usage row belongs to at most one batch, and a batch's rows never change
//! once the batch is written; a batch is `pending` until its transaction is known to have
//! succeeded on chain, then `settled` with its transaction hash, or dissolved (deleted, its rows
//! unbatched again) once the chain rejected it (`unsettleable`). A row marked `unsettleable`
//! (with its reason) is not batched and counts against its payer's funds until it ends one of two
//! ways, never both: retried (unmarked, batched again) once it would settle, or written off
//! (final: never batched, no longer owed).

use super::record::{receipt_id, DatanetAttribution, UsageRecord};
use crate::error::{Error, Result};
use alloy::primitives::{Address, B256, U256};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;

/// A settlement batch id: deterministic from its receipts (see `settlement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchId(pub B256);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    payer TEXT NOT NULL,
    operator TEXT NOT NULL,
    adapter_id TEXT NOT NULL,
    adapters TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    amount TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    finish TEXT NOT NULL,
    output_hash TEXT NOT NULL,
    receipt_id TEXT NOT NULL,
    leaf TEXT NOT NULL,
    attribution TEXT NOT NULL,
    splits TEXT NOT NULL,
    batch_id TEXT,
    batch_index INTEGER
);
CREATE INDEX IF NOT EXISTS usage_batch ON usage(batch_id, batch_index);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    root TEXT NOT NULL,
    call_count INTEGER NOT NULL,
    fee_bps INTEGER NOT NULL,
    debits TEXT NOT NULL,
    credits TEXT NOT NULL,
    status TEXT NOT NULL,
    tx_hash TEXT,
    block_number INTEGER,
    gas_used INTEGER,
    settled_at INTEGER
);
CREATE INDEX IF NOT EXISTS batches_status ON batches(status);
CREATE TABLE IF NOT EXISTS payers (
    payer TEXT PRIMARY KEY,
    escrow TEXT NOT NULL,
    refreshed_at INTEGER NOT NULL
);
";

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Ledger(e.to_string())
    }
}

pub(super) fn parse<T: FromStr>(s: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>()
        .map_err(|e| Error::Ledger(format!("corrupt ledger value `{s}`: {e}")))
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serializable")
}

fn unjson<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::Ledger(format!("corrupt ledger json: {e}")))
}

/// A usage row as the settlement worker needs it.
#[derive(Debug, Clone)]
pub struct UnbatchedRow {
    pub seq: i64,
    pub payer: Address,
    pub amount: U256,
    pub leaf: B256,
    pub splits: Vec<(Address, U256)>,
    pub created_at: u64,
}

/// A batch as written before submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    pub id: BatchId,
    pub root: B256,
    pub call_count: u64,
    pub fee_bps: u16,
    pub debits: Vec<(Address, U256)>,
    pub credits: Vec<(Address, U256)>,
    pub settled: Option<SettledInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettledInfo {
    pub tx_hash: B256,
    pub block_number: Option<u64>,
    pub gas_used: u64,
}

/// A record as `GET /v1/receipts/{id}` shows it.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub request_id: String,
    pub payer: Address,
    pub operator: Address,
    pub adapter_id: B256,
    pub adapters: serde_json::Value,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub amount: U256,
    pub created_at: u64,
    pub finish: String,
    pub output_hash: B256,
    pub receipt_id: B256,
    pub leaf: B256,
    pub attribution: Vec<DatanetAttribution>,
    pub splits: Vec<(Address, U256)>,
    pub batch: Option<(BatchId, u64)>,
    /// Why the chain will not settle this record (see `unsettleable`).
    pub unsettleable: Option<String>,
    /// When an unsettleable record was written off (released from its payer's debt; final).
    pub written_off_at: Option<u64>,
}

pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        super::unsettleable::migrate(&conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    pub(super) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits one record (durably); fails on a duplicate request id.
    pub fn insert(&self, r: &UsageRecord) -> Result<i64> {
        self.insert_all(&[r])?
            .pop()
            .unwrap_or_else(|| Err(Error::Ledger("no insert result".into())))
    }

    /// Commits `records` in one transaction (one sync to disk for the group: the writer's group
    /// commit). Each record succeeds or fails on its own (a duplicate request id fails only its
    /// row); the outer error means the transaction itself failed and nothing was written.
    pub fn insert_all(&self, records: &[&UsageRecord]) -> Result<Vec<Result<i64>>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let each: Vec<_> = records.iter().map(|r| insert_row(&tx, r)).collect();
        tx.commit()?;
        Ok(each)
    }

    pub fn get(&self, request_id: &str) -> Result<Option<StoredRecord>> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT request_id, payer, operator, adapter_id, adapters, prompt_tokens,
                 completion_tokens, amount, created_at, finish, output_hash, receipt_id, leaf,
                 attribution, splits, batch_id, batch_index, unsettleable, written_off_at
                 FROM usage WHERE request_id = ?1",
                params![request_id],
                |r| {
                    Ok((
                        (
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, i64>(5)?,
                            r.get::<_, i64>(6)?,
                            r.get::<_, String>(7)?,
                            r.get::<_, i64>(8)?,
                        ),
                        (
                            r.get::<_, String>(9)?,
                            r.get::<_, String>(10)?,
                            r.get::<_, String>(11)?,
                            r.get::<_, String>(12)?,
                            r.get::<_, String>(13)?,
                            r.get::<_, String>(14)?,
                            r.get::<_, Option<String>>(15)?,
                            r.get::<_, Option<i64>>(16)?,
                            r.get::<_, Option<String>>(17)?,
                            r.get::<_, Option<i64>>(18)?,
                        ),
                    ))
                },
            )
            .optional()?;
        let Some((a, b)) = row else { return Ok(None) };
        let splits: Vec<(Address, String)> = unjson(&b.5)?;
        Ok(Some(StoredRecord {
            request_id: a.0,
            payer: parse(&a.1)?,
            operator: parse(&a.2)?,
            adapter_id: parse(&a.3)?,
            adapters: unjson(&a.4)?,
            prompt_tokens: a.5 as u64,
            completion_tokens: a.6 as u64,
            amount: parse(&a.7)?,
            created_at: a.8 as u64,
            finish: b.0,
            output_hash: parse(&b.1)?,
            receipt_id: parse(&b.2)?,
            leaf: parse(&b.3)?,
            attribution: unjson(&b.4)?,
            splits: splits
                .into_iter()
                .map(|(a, x)| Ok((a, parse(&x)?)))
                .collect::<Result<_>>()?,
            batch: match (b.6, b.7) {
                (Some(id), Some(i)) => Some((BatchId(parse(&id)?), i as u64)),
                _ => None,
            },
            unsettleable: b.8,
            written_off_at: b.9.map(|t| t as u64),
        }))
    }

    /// Usage not yet settled on chain (unbatched, in a pending batch, or unsettleable and not
    /// written off: a debt the payer still owes), per payer.
    pub fn unsettled_by_payer(&self) -> Result<HashMap<Address, U256>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT u.payer, u.amount FROM usage u LEFT JOIN batches b ON u.batch_id = b.batch_id
             WHERE (u.batch_id IS NULL AND u.written_off_at IS NULL) OR b.status = 'pending'",
        )?;
        let mut out: HashMap<Address, U256> = HashMap::new();
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (p, a) = row?;
            *out.entry(parse(&p)?).or_default() += parse::<U256>(&a)?;
        }
        Ok(out)
    }

    /// (records still to settle, created_at of the oldest of them; unsettleable ones excluded).
    /// Two indexed queries (records in
    /// no batch, records in pending batches), so it stays cheap as the ledger grows.
    pub fn unsettled_stats(&self) -> Result<(u64, Option<u64>)> {
        let (a, oldest_a) = self.count_oldest(
            "SELECT COUNT(*), MIN(created_at) FROM usage WHERE batch_id IS NULL AND unsettleable IS NULL",
        )?;
        let (b, oldest_b) = self.count_oldest(
            "SELECT COUNT(*), MIN(created_at) FROM usage WHERE batch_id IN
             (SELECT batch_id FROM batches WHERE status = 'pending')",
        )?;
        let oldest = match (oldest_a, oldest_b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        Ok((a + b, oldest))
    }

    /// (records in no batch and not unsettleable, created_at of the oldest of them).
    pub fn unbatched_stats(&self) -> Result<(u64, Option<u64>)> {
        self.count_oldest(
            "SELECT COUNT(*), MIN(created_at) FROM usage WHERE batch_id IS NULL AND unsettleable IS NULL",
        )
    }

    fn count_oldest(&self, sql: &str) -> Result<(u64, Option<u64>)> {
        Ok(self.conn().query_row(sql, [], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, Option<i64>>(1)?.map(|t| t as u64),
            ))
        })?)
    }

    /// The oldest `limit` records in no batch (and not unsettleable), in ledger order.
    pub fn unbatched(&self, limit: usize) -> Result<Vec<UnbatchedRow>> {
        self.rows(
            &format!("WHERE batch_id IS NULL AND unsettleable IS NULL ORDER BY seq LIMIT {limit}"),
            None,
        )
    }

    /// The records of a batch, in batch order.
    pub fn batch_rows(&self, id: BatchId) -> Result<Vec<UnbatchedRow>> {
        self.rows(
            "WHERE batch_id = ?1 ORDER BY batch_index",
            Some(id.0.to_string()),
        )
    }

    pub(super) fn rows(&self, filter: &str, arg: Option<String>) -> Result<Vec<UnbatchedRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT seq, payer, amount, leaf, splits, created_at FROM usage {filter}"
        ))?;
        let map = |r: &rusqlite::Row| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
            ))
        };
        let rows: Vec<_> = match arg {
            Some(a) => stmt
                .query_map(params![a], map)?
                .collect::<rusqlite::Result<_>>()?,
            None => stmt.query_map([], map)?.collect::<rusqlite::Result<_>>()?,
        };
        let mut out = vec![];
        for (seq, payer, amount, leaf, splits, created_at) in rows {
            out.push(UnbatchedRow {
                seq,
                payer: parse(&payer)?,
                amount: parse(&amount)?,
                leaf: parse(&leaf)?,
                splits: unamounts(&splits)?,
                created_at: created_at as u64,
            });
        }
        Ok(out)
    }

    /// Writes a pending batch and assigns its rows (in order) in one transaction.
    pub fn create_batch(&self, b: &StoredBatch, seqs: &[i64], now: u64) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO batches (batch_id, created_at, root, call_count, fee_bps, debits, credits, status)
             VALUES (?1,?2,?3,?4,?5,?6,?7,'pending')",
            params![
                b.id.0.to_string(),
                now as i64,
                b.root.to_string(),
                b.call_count as i64,
                b.fee_bps as i64,
                json(&amounts(&b.debits)),
                json(&amounts(&b.credits)),
            ],
        )?;
        for (i, seq) in seqs.iter().enumerate() {
            let n = tx.execute(
                "UPDATE usage SET batch_id = ?1, batch_index = ?2 WHERE seq = ?3 AND batch_id IS NULL",
                params![b.id.0.to_string(), i as i64, seq],
            )?;
            if n != 1 {
                return Err(Error::Ledger(format!("record {seq} is already in a batch")));
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Replaces a pending batch's credits (the protocol fee changed before it landed).
    pub fn update_credits(
        &self,
        id: BatchId,
        fee_bps: u16,
        credits: &[(Address, U256)],
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE batches SET fee_bps = ?1, credits = ?2 WHERE batch_id = ?3 AND status = 'pending'",
            params![fee_bps as i64, json(&amounts(credits)), id.0.to_string()],
        )?;
        Ok(())
    }

    pub fn mark_settled(&self, id: BatchId, s: SettledInfo, now: u64) -> Result<()> {
        self.conn().execute(
            "UPDATE batches SET status = 'settled', tx_hash = ?1, block_number = ?2, gas_used = ?3,
             settled_at = ?4 WHERE batch_id = ?5",
            params![
                s.tx_hash.to_string(),
                s.block_number.map(|b| b as i64),
                s.gas_used as i64,
                now as i64,
                id.0.to_string()
            ],
        )?;
        Ok(())
    }

    fn batches_where(&self, filter: &str, arg: Option<String>) -> Result<Vec<StoredBatch>> {
        let conn = self.conn();
        let sql = format!(
            "SELECT batch_id, root, call_count, fee_bps, debits, credits, status, tx_hash,
             block_number, gas_used FROM batches WHERE {filter} ORDER BY created_at, batch_id"
        );
        let mut stmt = conn.prepare(&sql)?;
        let map = |r: &rusqlite::Row| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, Option<i64>>(8)?,
                r.get::<_, Option<i64>>(9)?,
            ))
        };
        let rows: Vec<_> = match arg {
            Some(a) => stmt
                .query_map(params![a], map)?
                .collect::<rusqlite::Result<_>>()?,
            None => stmt.query_map([], map)?.collect::<rusqlite::Result<_>>()?,
        };
        rows.into_iter()
            .map(
                |(id, root, n, bps, debits, credits, status, tx, block, gas)| {
                    Ok(StoredBatch {
                        id: BatchId(parse(&id)?),
                        root: parse(&root)?,
                        call_count: n as u64,
                        fee_bps: bps as u16,
                        debits: unamounts(&debits)?,
                        credits: unamounts(&credits)?,
                        settled: match (status.as_str(), tx) {
                            ("settled", Some(tx)) => Some(SettledInfo {
                                tx_hash: parse(&tx)?,
                                block_number: block.map(|b| b as u64),
                                gas_used: gas.unwrap_or(0) as u64,
                            }),
                            _ => None,
                        },
                    })
                },
            )
            .collect()
    }

    /// Batches recorded settled at or after unix time `from`.
    pub fn settled_since(&self, from: u64) -> Result<Vec<StoredBatch>> {
        self.batches_where(
            "status = 'settled' AND settled_at >= CAST(?1 AS INTEGER)",
            Some(from.to_string()),
        )
    }

    /// A settled batch the chain does not have: back to `pending`, its transaction forgotten.
    pub fn reopen_batch(&self, id: BatchId) -> Result<()> {
        self.conn().execute(
            "UPDATE batches SET status = 'pending', tx_hash = NULL, block_number = NULL,
             gas_used = NULL, settled_at = NULL WHERE batch_id = ?1 AND status = 'settled'",
            params![id.0.to_string()],
        )?;
        Ok(())
    }

    pub fn pending_batches(&self) -> Result<Vec<StoredBatch>> {
        self.batches_where("status = 'pending'", None)
    }

    pub fn all_batches(&self) -> Result<Vec<StoredBatch>> {
        self.batches_where("1 = 1", None)
    }

    pub fn batch(&self, id: BatchId) -> Result<Option<StoredBatch>> {
        Ok(self
            .batches_where("batch_id = ?1", Some(id.0.to_string()))?
            .pop())
    }

    /// Leaves of a batch in batch order.
    pub fn batch_leaves(&self, id: BatchId) -> Result<Vec<B256>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT leaf FROM usage WHERE batch_id = ?1 ORDER BY batch_index")?;
        let rows = stmt.query_map(params![id.0.to_string()], |r| r.get::<_, String>(0))?;
        rows.map(|l| parse(&l?)).collect()
    }

    /// Every record's (request id, payer, amount), for audits and tests.
    pub fn all_amounts(&self) -> Result<Vec<(String, Address, U256)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT request_id, payer, amount FROM usage ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        rows.map(|row| {
            let (id, p, a) = row?;
            Ok((id, parse(&p)?, parse(&a)?))
        })
        .collect()
    }

    pub fn set_escrow(&self, payer: Address, escrow: U256, now: u64) -> Result<()> {
        self.conn().execute(
            "INSERT INTO payers (payer, escrow, refreshed_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(payer) DO UPDATE SET escrow = ?2, refreshed_at = ?3",
            params![payer.to_string(), escrow.to_string(), now as i64],
        )?;
        Ok(())
    }

    pub fn escrows(&self) -> Result<HashMap<Address, U256>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT payer, escrow FROM payers")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|row| {
            let (p, e) = row?;
            Ok((parse(&p)?, parse(&e)?))
        })
        .collect()
    }
}

fn insert_row(conn: &Connection, r: &UsageRecord) -> Result<i64> {
    let adapters: Vec<serde_json::Value> = r
        .parts
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.terms.name, "weight": p.weight, "cost": p.cost.to_string(),
                "owner": p.terms.owner,
                "price_per_million_input_tokens": p.terms.price.per_m_input.to_string(),
                "price_per_million_output_tokens": p.terms.price.per_m_output.to_string(),
            })
        })
        .collect();
    let splits: Vec<(Address, String)> =
        r.splits.iter().map(|(a, x)| (*a, x.to_string())).collect();
    let receipt = r.receipt();
    conn.execute(
        "INSERT INTO usage (request_id, payer, operator, adapter_id, adapters, prompt_tokens,
         completion_tokens, amount, created_at, finish, output_hash, receipt_id, leaf,
         attribution, splits) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15)",
        params![
            r.request_id.0,
            r.payer.to_string(),
            r.operator.to_string(),
            r.adapter_id.to_string(),
            json(&adapters),
            r.prompt_tokens as i64,
            r.completion_tokens as i64,
            r.amount.to_string(),
            r.timestamp as i64,
            r.finish,
            r.output_hash.to_string(),
            receipt_id(&r.request_id, r.output_hash).to_string(),
            receipt.leaf().to_string(),
            json(&r.attribution),
            json(&splits),
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

fn amounts(v: &[(Address, U256)]) -> Vec<(Address, String)> {
    v.iter().map(|(a, x)| (*a, x.to_string())).collect()
}

fn unamounts(s: &str) -> Result<Vec<(Address, U256)>> {
    let v: Vec<(Address, String)> = unjson(s)?;
    v.into_iter().map(|(a, x)| Ok((a, parse(&x)?))).collect()
}
