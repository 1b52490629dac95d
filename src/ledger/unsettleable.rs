//! The ledger side of settlement liveness and of deposits across restarts: records the chain
//! will not settle (`mark_unsettleable`) and how each ends (`retry_unsettleable` once it would
//! settle, `write_off` after the grace period), batches the chain rejected (`dissolve_batch`),
//! and the last known deposits with the time they were read (`escrows_with_time`).
//!
//! What always holds: an unsettleable record is never batched while marked; it ends retried
//! (unmarked, batched again) or written off (final, keeps its reason), never both: each update
//! applies only to a record that is still open (marked, not written off); a dissolved batch is
//! removed only while `pending` (never a settled one), and its rows become unbatched in the same
//! transaction.

use super::store::{parse, BatchId, Store, UnbatchedRow};
use crate::error::Result;
use alloy::primitives::{Address, U256};
use rusqlite::{params, Connection};
use std::collections::HashMap;

/// Adds the columns of unsettleable records (`unsettleable`, `unsettleable_at`,
/// `written_off_at`) to ledgers written before they existed.
pub(super) fn migrate(conn: &Connection) -> Result<()> {
    for (column, ty) in [
        ("unsettleable", "TEXT"),
        ("unsettleable_at", "INTEGER"),
        ("written_off_at", "INTEGER"),
    ] {
        let has: i64 = conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info('usage') WHERE name = ?1",
            params![column],
            |r| r.get(0),
        )?;
        if has == 0 {
            conn.execute(&format!("ALTER TABLE usage ADD COLUMN {column} {ty}"), [])?;
        }
    }
    Ok(())
}

impl Store {
    /// Marks the unbatched record `seq` as not settleable now, with `reason`, at `at` (unix s).
    pub fn mark_unsettleable(&self, seq: i64, reason: &str, at: u64) -> Result<()> {
        self.conn().execute(
            "UPDATE usage SET unsettleable = ?1, unsettleable_at = ?2
             WHERE seq = ?3 AND batch_id IS NULL AND written_off_at IS NULL",
            params![reason, at as i64, seq],
        )?;
        Ok(())
    }

    /// The unsettleable records still owed (not written off), with when each was marked.
    pub fn open_unsettleable(&self) -> Result<Vec<(UnbatchedRow, u64)>> {
        let rows = self.rows(
            "WHERE batch_id IS NULL AND unsettleable IS NOT NULL AND written_off_at IS NULL
             ORDER BY seq",
            None,
        )?;
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT COALESCE(unsettleable_at, 0) FROM usage WHERE seq = ?1")?;
        rows.into_iter()
            .map(|r| {
                let at: i64 = stmt.query_row(params![r.seq], |x| x.get(0))?;
                Ok((r, at.max(0) as u64))
            })
            .collect()
    }

    /// The cause is gone: the unsettleable record `seq` (not written off) is batched again.
    /// Returns false when it was not open (already written off or retried).
    pub fn retry_unsettleable(&self, seq: i64) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE usage SET unsettleable = NULL, unsettleable_at = NULL
             WHERE seq = ?1 AND unsettleable IS NOT NULL AND written_off_at IS NULL",
            params![seq],
        )?;
        Ok(n == 1)
    }

    /// Writes off the unsettleable record `seq` at `at`: final, it is never batched and no longer
    /// owed. Returns false when it was not open (already retried or written off).
    pub fn write_off(&self, seq: i64, at: u64) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE usage SET written_off_at = ?1
             WHERE seq = ?2 AND unsettleable IS NOT NULL AND written_off_at IS NULL
             AND batch_id IS NULL",
            params![at as i64, seq],
        )?;
        Ok(n == 1)
    }

    /// Removes pending batch `id` (the chain rejected it) and unbatches its rows.
    pub fn dissolve_batch(&self, id: BatchId) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM batches WHERE batch_id = ?1 AND status = 'pending'",
            params![id.0.to_string()],
        )?;
        if n == 1 {
            tx.execute(
                "UPDATE usage SET batch_id = NULL, batch_index = NULL WHERE batch_id = ?1",
                params![id.0.to_string()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// (request id, payer, amount, reason) of every unsettleable record, in ledger order.
    pub fn unsettleable(&self) -> Result<Vec<(String, Address, U256, String)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT request_id, payer, amount, unsettleable FROM usage
             WHERE unsettleable IS NOT NULL ORDER BY seq",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        rows.map(|row| {
            let (id, p, a, why) = row?;
            Ok((id, parse(&p)?, parse(&a)?, why))
        })
        .collect()
    }

    /// The last known escrow of each payer and when it was read (unix seconds).
    pub fn escrows_with_time(&self) -> Result<HashMap<Address, (U256, u64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT payer, escrow, refreshed_at FROM payers")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        rows.map(|row| {
            let (p, e, t) = row?;
            Ok((parse(&p)?, (parse(&e)?, t.max(0) as u64)))
        })
        .collect()
    }
}
