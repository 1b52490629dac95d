//! The ledger's one writer: a thread that owns every write to the ledger. Callers queue a usage
//! record (`Writer::submit`) and get a `Commit` that resolves once the record is durable; the
//! thread takes every record queued meanwhile and commits them in one SQLite transaction (group
//! commit: one `synchronous = FULL` sync for the group), then answers each caller and moves its
//! payer's reservation to committed usage. The settlement worker's writes (batches, escrows) run
//! on the same thread (`Writer::write`). No request thread or async worker waits on a commit.
//!
//! What always holds: a record's `Commit` resolves `Ok` only after its transaction committed;
//! records queued before the writer is dropped are committed before its thread ends.

use super::funds::{Funds, Reservation};
use super::record::UsageRecord;
use super::store::Store;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use alloy::primitives::U256;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// Most records committed in one transaction.
const MAX_GROUP: usize = 256;

/// After a record commits: its payer's reservation becomes `amount` of committed usage.
pub struct Settle {
    pub funds: Arc<Funds>,
    pub reservation: Reservation,
    pub amount: U256,
}

enum Job {
    Insert(
        Box<UsageRecord>,
        Option<Settle>,
        oneshot::Sender<Result<()>>,
    ),
    /// Any other ledger write (settlement batches, escrows); answers through its own channel.
    Write(Box<dyn FnOnce(&Store) + Send>),
    /// Answered once every job queued before it is done.
    Flush(oneshot::Sender<()>),
}

pub struct Writer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

/// Resolves when the record it stands for is committed (at once when there was none to write).
#[must_use = "a Commit that is not waited for gives no durability guarantee"]
pub struct Commit(Option<oneshot::Receiver<Result<()>>>);

impl Commit {
    /// Nothing to write.
    pub fn none() -> Self {
        Commit(None)
    }

    pub async fn wait(self) -> Result<()> {
        match self.0 {
            None => Ok(()),
            Some(rx) => rx.await.unwrap_or_else(|_| Err(stopped())),
        }
    }

    /// For non-async callers (tests, tools); never on an async worker.
    pub fn wait_blocking(self) -> Result<()> {
        match self.0 {
            None => Ok(()),
            Some(rx) => rx.blocking_recv().unwrap_or_else(|_| Err(stopped())),
        }
    }
}

fn stopped() -> Error {
    Error::Ledger("the ledger writer stopped".into())
}

impl Writer {
    pub fn spawn(store: Arc<Store>, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("openlora-ledger".into())
            .spawn(move || run(&store, &metrics, rx))
            .expect("spawn the ledger writer");
        Writer {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Queues `record`; `settle` runs once it is committed.
    pub fn submit(&self, record: UsageRecord, settle: Option<Settle>) -> Commit {
        let (tx, rx) = oneshot::channel();
        let job = Job::Insert(Box::new(record), settle, tx);
        if self.tx.as_ref().is_some_and(|t| t.send(job).is_ok()) {
            return Commit(Some(rx));
        }
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Err(stopped()));
        Commit(Some(rx))
    }

    /// Runs the write `f` on the writer thread (after the records queued before it) and returns
    /// its result.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let job = Job::Write(Box::new(move |s: &Store| drop(tx.send(f(s)))));
        if self.tx.as_ref().is_none_or(|t| t.send(job).is_err()) {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Blocks until every record queued so far is committed (tests, shutdown).
    pub fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self
            .tx
            .as_ref()
            .is_some_and(|t| t.send(Job::Flush(tx)).is_ok())
        {
            let _ = rx.blocking_recv();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(store: &Store, metrics: &Metrics, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        commit_group(store, metrics, jobs);
    }
}

fn commit_group(store: &Store, metrics: &Metrics, jobs: Vec<Job>) {
    let records: Vec<&UsageRecord> = jobs
        .iter()
        .filter_map(|j| match j {
            Job::Insert(r, _, _) => Some(&**r),
            Job::Write(_) | Job::Flush(_) => None,
        })
        .collect();
    let results = store.insert_all(&records);
    let mut results = match results {
        Ok(each) => each.into_iter(),
        Err(e) => {
            let msg = e.to_string();
            tracing::error!(error = %msg, records = records.len(), "ledger group commit failed");
            let failed: Vec<Result<i64>> = records
                .iter()
                .map(|_| Err(Error::Ledger(msg.clone())))
                .collect();
            failed.into_iter()
        }
    };
    for job in jobs {
        match job {
            Job::Flush(done) => drop(done.send(())),
            Job::Write(f) => f(store),
            Job::Insert(record, settle, reply) => {
                let r = results.next().unwrap_or_else(|| Err(stopped())).map(|_| ());
                if r.is_ok() {
                    metrics.ledger_records.inc();
                    if let Some(s) = settle {
                        s.funds.commit(s.reservation, s.amount);
                    }
                }
                if let Err(Err(e)) = reply.send(r) {
                    // Nobody waits (a cancelled call): the log is the only place it shows.
                    tracing::error!(request_id = %record.request_id.0, error = %e, "could not record a call");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::RequestId;
    use super::*;
    use alloy::primitives::{Address, B256};

    fn record(id: &str) -> UsageRecord {
        UsageRecord {
            request_id: RequestId(id.into()),
            payer: Address::repeat_byte(1),
            operator: Address::repeat_byte(2),
            adapter_id: B256::ZERO,
            parts: vec![],
            prompt_tokens: 3,
            completion_tokens: 2,
            amount: U256::from(7u64),
            timestamp: 1,
            finish: "stop".into(),
            output_hash: B256::ZERO,
            attribution: vec![],
            splits: vec![(Address::repeat_byte(2), U256::from(7u64))],
        }
    }

    #[test]
    fn concurrent_records_commit_in_groups_and_a_duplicate_fails_alone() {
        let dir = std::env::temp_dir().join(format!("openlora-writer-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(Store::open(&dir.join("ledger.sqlite")).unwrap());
        let metrics = Arc::new(Metrics::new());
        let writer = Arc::new(Writer::spawn(store.clone(), metrics.clone()));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let w = writer.clone();
                std::thread::spawn(move || {
                    let commits: Vec<Commit> = (0..25)
                        .map(|i| w.submit(record(&format!("r{t}-{i}")), None))
                        .collect();
                    commits
                        .into_iter()
                        .map(Commit::wait_blocking)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap().iter().all(Result::is_ok));
        }
        assert_eq!(
            store.all_amounts().unwrap().len(),
            200,
            "every record committed"
        );
        assert_eq!(metrics.ledger_records.get(), 200);
        // In one group: a duplicate id fails its own record only.
        let a = writer.submit(record("r0-0"), None);
        let b = writer.submit(record("fresh"), None);
        assert!(a.wait_blocking().is_err(), "request ids are unique");
        b.wait_blocking().unwrap();
        assert!(store.get("fresh").unwrap().is_some());
        drop(writer);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
