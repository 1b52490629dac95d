//! The ledger side of settlement liveness and of deposits across restarts: records the chain
//! will not settle (`mark_unsettleable`), batches the chain rejected (`dissolve_batch`), and the
//! last known deposits with the time they were read (`escrows_with_time`).
//!
//! What always holds: an unsettleable record keeps its reason forever and is never batched again;
//! a dissolved batch is removed only while `pending` (never a settled one), and its rows become
//! unbatched in the same transaction.

use super::store::{parse, BatchId, Store};
use crate::error::Result;
use alloy::primitives::{Address, U256};
use rusqlite::{params, Connection};
use std::collections::HashMap;

/// Adds the `unsettleable` column to ledgers written before it existed.
pub(super) fn migrate(conn: &Connection) -> Result<()> {
    let has: i64 = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('usage') WHERE name = 'unsettleable'",
        [],
        |r| r.get(0),
    )?;
    if has == 0 {
        conn.execute("ALTER TABLE usage ADD COLUMN unsettleable TEXT", [])?;
    }
    Ok(())
}

impl Store {
    /// Marks the unbatched record `seq` as never to be settled, with `reason`.
    pub fn mark_unsettleable(&self, seq: i64, reason: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE usage SET unsettleable = ?1 WHERE seq = ?2 AND batch_id IS NULL",
            params![reason, seq],
        )?;
        Ok(())
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
