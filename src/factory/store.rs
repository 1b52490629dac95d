//! The factory's durable state: one SQLite file (WAL, `synchronous = FULL`, like the ledger)
//! holding uploaded files' metadata, jobs, their events and checkpoints; file contents live
//! beside it (`FileStore`). What always holds: a job's status only moves forward along
//! validating_files -> queued -> running -> succeeded | failed | cancelled (`set_status` refuses
//! any other move, so a cancelled job can never be marked succeeded); rows are listed newest
//! first by their insertion order (`seq`), which is also the paging cursor order.

use super::ids::{CheckpointId, EventId, FileId, JobId};
use super::job_spec::JobSpec;
use crate::clock::unix_now;
use crate::error::{Error, Result};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use std::path::Path;
use std::sync::Mutex;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    examples INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    fine_tuned_model TEXT,
    finished_at INTEGER,
    trained_tokens INTEGER,
    error TEXT
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    level TEXT NOT NULL,
    type TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    step INTEGER NOT NULL,
    trained_tokens INTEGER NOT NULL,
    metrics TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS checkpoints_job ON checkpoints(job_id, seq);
";

/// A job's lifecycle, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    ValidatingFiles,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::ValidatingFiles => "validating_files",
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "validating_files" => JobStatus::ValidatingFiles,
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            "cancelled" => JobStatus::Cancelled,
            other => return Err(Error::Ledger(format!("unknown job status `{other}`"))),
        })
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    fn rank(self) -> u8 {
        match self {
            JobStatus::ValidatingFiles => 0,
            JobStatus::Queued => 1,
            JobStatus::Running => 2,
            _ => 3,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FileRow {
    pub id: FileId,
    pub bytes: i64,
    pub created_at: i64,
    pub filename: String,
    pub purpose: String,
    pub examples: i64,
}

#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: JobId,
    pub created_at: i64,
    pub status: JobStatus,
    pub spec: JobSpec,
    pub fine_tuned_model: Option<String>,
    pub finished_at: Option<i64>,
    pub trained_tokens: Option<i64>,
    /// `{"code", "message", "param"}` of a failed job.
    pub error: Option<Value>,
}

#[derive(Debug, Clone)]
pub struct EventRow {
    pub id: EventId,
    pub created_at: i64,
    pub level: String,
    pub kind: String,
    pub message: String,
    pub data: Option<Value>,
}

#[derive(Debug, Clone)]
pub struct CheckpointRow {
    pub id: CheckpointId,
    pub job_id: JobId,
    pub created_at: i64,
    pub step: i64,
    pub trained_tokens: i64,
    pub metrics: Value,
}

/// One page of a newest-first listing.
pub struct Page<T> {
    pub data: Vec<T>,
    pub has_more: bool,
}

pub struct FactoryStore {
    conn: Mutex<Connection>,
}

fn db(e: impl std::fmt::Display) -> Error {
    Error::Ledger(format!("factory store: {e}"))
}

fn json_of(text: Option<String>) -> Result<Option<Value>> {
    text.map(|t| serde_json::from_str(&t).map_err(db))
        .transpose()
}

impl FactoryStore {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        Ok(FactoryStore {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(db)
    }

    pub fn insert_file(&self, f: &FileRow) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO files (id, bytes, created_at, filename, purpose, examples) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![f.id.as_str(), f.bytes, f.created_at, f.filename, f.purpose, f.examples],
            )
            .map(|_| ())
        })
    }

    fn file_of(r: &rusqlite::Row) -> rusqlite::Result<FileRow> {
        let id: String = r.get(0)?;
        Ok(FileRow {
            id: FileId::parse(&id).ok_or(rusqlite::Error::InvalidQuery)?,
            bytes: r.get(1)?,
            created_at: r.get(2)?,
            filename: r.get(3)?,
            purpose: r.get(4)?,
            examples: r.get(5)?,
        })
    }

    pub fn file(&self, id: &FileId) -> Result<Option<FileRow>> {
        self.with(|c| {
            c.query_row(
                "SELECT id, bytes, created_at, filename, purpose, examples FROM files WHERE id = ?1",
                [id.as_str()],
                Self::file_of,
            )
            .optional()
        })
    }

    pub fn files(
        &self,
        purpose: Option<&str>,
        after: Option<&FileId>,
        limit: usize,
    ) -> Result<Page<FileRow>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, bytes, created_at, filename, purpose, examples FROM files
                 WHERE (?1 IS NULL OR purpose = ?1)
                   AND (?2 IS NULL OR seq < (SELECT seq FROM files WHERE id = ?2))
                 ORDER BY seq DESC LIMIT ?3",
            )?;
            let rows = st
                .query_map(
                    params![purpose, after.map(FileId::as_str), limit as i64 + 1],
                    Self::file_of,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(page(rows, limit))
        })
    }

    pub fn delete_file(&self, id: &FileId) -> Result<bool> {
        self.with(|c| {
            c.execute("DELETE FROM files WHERE id = ?1", [id.as_str()])
                .map(|n| n > 0)
        })
    }

    pub fn insert_job(&self, id: &JobId, spec: &JobSpec) -> Result<()> {
        let spec = serde_json::to_string(spec).map_err(db)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO jobs (id, created_at, status, spec) VALUES (?1, ?2, ?3, ?4)",
                params![
                    id.as_str(),
                    (unix_now() as i64),
                    JobStatus::ValidatingFiles.as_str(),
                    spec
                ],
            )
            .map(|_| ())
        })
    }

    fn job_of(r: &rusqlite::Row) -> rusqlite::Result<(JobRow, String)> {
        let id: String = r.get(0)?;
        let status: String = r.get(2)?;
        let spec: String = r.get(3)?;
        let bad = |_| rusqlite::Error::InvalidQuery;
        Ok((
            JobRow {
                id: JobId::parse(&id).ok_or(rusqlite::Error::InvalidQuery)?,
                created_at: r.get(1)?,
                status: JobStatus::parse(&status).map_err(bad)?,
                spec: serde_json::from_str(&spec).map_err(|_| rusqlite::Error::InvalidQuery)?,
                fine_tuned_model: r.get(4)?,
                finished_at: r.get(5)?,
                trained_tokens: r.get(6)?,
                error: None,
            },
            r.get::<_, Option<String>>(7)?.unwrap_or_default(),
        ))
    }

    fn finish_job(row: (JobRow, String)) -> Result<JobRow> {
        let (mut job, err) = row;
        job.error = json_of((!err.is_empty()).then_some(err))?;
        Ok(job)
    }

    const JOB_COLUMNS: &'static str =
        "id, created_at, status, spec, fine_tuned_model, finished_at, trained_tokens, error";

    pub fn job(&self, id: &JobId) -> Result<Option<JobRow>> {
        let sql = format!("SELECT {} FROM jobs WHERE id = ?1", Self::JOB_COLUMNS);
        self.with(|c| c.query_row(&sql, [id.as_str()], Self::job_of).optional())?
            .map(Self::finish_job)
            .transpose()
    }

    pub fn jobs(&self, after: Option<&JobId>, limit: usize) -> Result<Page<JobRow>> {
        let sql = format!(
            "SELECT {} FROM jobs WHERE (?1 IS NULL OR seq < (SELECT seq FROM jobs WHERE id = ?1))
             ORDER BY seq DESC LIMIT ?2",
            Self::JOB_COLUMNS
        );
        let rows = self.with(|c| {
            let mut st = c.prepare(&sql)?;
            let v = st
                .query_map(
                    params![after.map(JobId::as_str), limit as i64 + 1],
                    Self::job_of,
                )?
                .collect::<rusqlite::Result<Vec<_>>>();
            v
        })?;
        let rows = rows
            .into_iter()
            .map(Self::finish_job)
            .collect::<Result<Vec<_>>>()?;
        Ok(page(rows, limit))
    }

    /// Jobs in `status`, oldest first.
    pub fn jobs_in(&self, status: JobStatus) -> Result<Vec<JobRow>> {
        let sql = format!(
            "SELECT {} FROM jobs WHERE status = ?1 ORDER BY seq ASC",
            Self::JOB_COLUMNS
        );
        let rows = self.with(|c| {
            let mut st = c.prepare(&sql)?;
            let v = st
                .query_map([status.as_str()], Self::job_of)?
                .collect::<rusqlite::Result<Vec<_>>>();
            v
        })?;
        rows.into_iter().map(Self::finish_job).collect()
    }

    /// The oldest job still validating its files or queued, if any.
    pub fn oldest_unstarted(&self) -> Result<Option<JobRow>> {
        let sql = format!(
            "SELECT {} FROM jobs WHERE status IN (?1, ?2) ORDER BY seq ASC LIMIT 1",
            Self::JOB_COLUMNS
        );
        let row = self.with(|c| {
            let mut st = c.prepare(&sql)?;
            let v = st
                .query_map(
                    [
                        JobStatus::ValidatingFiles.as_str(),
                        JobStatus::Queued.as_str(),
                    ],
                    Self::job_of,
                )?
                .next()
                .transpose();
            v
        })?;
        row.map(Self::finish_job).transpose()
    }

    /// Moves `id` forward to `to`; `Ok(false)` (nothing written) when that would not be forward
    /// (e.g. the job was cancelled meanwhile). Final statuses stamp `finished_at`.
    pub fn set_status(&self, id: &JobId, to: JobStatus) -> Result<bool> {
        let Some(job) = self.job(id)? else {
            return Ok(false);
        };
        if job.status.is_final() || to.rank() <= job.status.rank() && to != job.status {
            return Ok(false);
        }
        let finished = to.is_final().then(|| unix_now() as i64);
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET status = ?2, finished_at = ?3 WHERE id = ?1 AND status = ?4",
                params![id.as_str(), to.as_str(), finished, job.status.as_str()],
            )
            .map(|n| n > 0)
        })
    }

    /// Marks `id` failed with `error` (unless it is already final).
    pub fn fail(&self, id: &JobId, error: &Value) -> Result<bool> {
        let moved = self.set_status(id, JobStatus::Failed)?;
        if moved {
            let e = error.to_string();
            self.with(|c| {
                c.execute(
                    "UPDATE jobs SET error = ?2 WHERE id = ?1",
                    params![id.as_str(), e],
                )
            })?;
        }
        Ok(moved)
    }

    /// Records the deployed model and marks the job succeeded (unless cancelled meanwhile).
    pub fn succeed(&self, id: &JobId, model: &str, tokens: u64) -> Result<bool> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET status = 'succeeded', fine_tuned_model = ?2, trained_tokens = ?3, finished_at = ?4
                 WHERE id = ?1 AND status = 'running'",
                params![id.as_str(), model, tokens as i64, (unix_now() as i64)],
            )
            .map(|n| n > 0)
        })
    }

    pub fn set_trained_tokens(&self, id: &JobId, tokens: u64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET trained_tokens = ?2 WHERE id = ?1",
                params![id.as_str(), tokens as i64],
            )
            .map(|_| ())
        })
    }

    pub fn add_event(
        &self,
        job: &JobId,
        level: &str,
        kind: &str,
        message: &str,
        data: Option<&Value>,
    ) -> Result<()> {
        let data = data.map(Value::to_string);
        self.with(|c| {
            c.execute(
                "INSERT INTO events (id, job_id, created_at, level, type, message, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![EventId::fresh().as_str(), job.as_str(), (unix_now() as i64), level, kind, message, data],
            )
            .map(|_| ())
        })
    }

    /// Drops the per-step training metrics of steps after `step`: a job resumed from the
    /// checkpoint at `step` trains those steps again and records them anew, each once.
    pub fn drop_step_events_after(&self, job: &JobId, step: u64) -> Result<usize> {
        self.with(|c| {
            c.execute(
                "DELETE FROM events WHERE job_id = ?1 AND type = 'metrics'
                 AND json_extract(data, '$.train_loss') IS NOT NULL
                 AND json_extract(data, '$.step') > ?2",
                params![job.as_str(), step as i64],
            )
        })
    }

    pub fn events(
        &self,
        job: &JobId,
        after: Option<&EventId>,
        limit: usize,
    ) -> Result<Page<EventRow>> {
        let rows = self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, created_at, level, type, message, data FROM events
                 WHERE job_id = ?1 AND (?2 IS NULL OR seq < (SELECT seq FROM events WHERE id = ?2))
                 ORDER BY seq DESC LIMIT ?3",
            )?;
            let v = st
                .query_map(params![job.as_str(), after.map(EventId::as_str), limit as i64 + 1], |r| {
                    let id: String = r.get(0)?;
                    Ok((id, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get::<_, Option<String>>(5)?))
                })?
                .collect::<rusqlite::Result<Vec<(String, i64, String, String, String, Option<String>)>>>();
            v
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, created_at, level, kind, message, data) in rows {
            out.push(EventRow {
                id: EventId::parse(&id).ok_or_else(|| db("bad event id"))?,
                created_at,
                level,
                kind,
                message,
                data: json_of(data)?,
            });
        }
        Ok(page(out, limit))
    }

    pub fn add_checkpoint(
        &self,
        job: &JobId,
        step: u64,
        tokens: u64,
        metrics: &Value,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO checkpoints (id, job_id, created_at, step, trained_tokens, metrics) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![CheckpointId::fresh().as_str(), job.as_str(), (unix_now() as i64), step as i64, tokens as i64, metrics.to_string()],
            )
            .map(|_| ())
        })
    }

    pub fn checkpoints(
        &self,
        job: &JobId,
        after: Option<&CheckpointId>,
        limit: usize,
    ) -> Result<Page<CheckpointRow>> {
        let rows = self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, created_at, step, trained_tokens, metrics FROM checkpoints
                 WHERE job_id = ?1 AND (?2 IS NULL OR seq < (SELECT seq FROM checkpoints WHERE id = ?2))
                 ORDER BY seq DESC LIMIT ?3",
            )?;
            let v = st
                .query_map(params![job.as_str(), after.map(CheckpointId::as_str), limit as i64 + 1], |r| {
                    let id: String = r.get(0)?;
                    Ok((id, r.get(1)?, r.get(2)?, r.get(3)?, r.get::<_, String>(4)?))
                })?
                .collect::<rusqlite::Result<Vec<(String, i64, i64, i64, String)>>>();
            v
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, created_at, step, trained_tokens, metrics) in rows {
            out.push(CheckpointRow {
                id: CheckpointId::parse(&id).ok_or_else(|| db("bad checkpoint id"))?,
                job_id: job.clone(),
                created_at,
                step,
                trained_tokens,
                metrics: serde_json::from_str(&metrics).map_err(db)?,
            });
        }
        Ok(page(out, limit))
    }

    /// Whether a job that is not final uses file `id`.
    pub fn file_in_use(&self, id: &FileId) -> Result<bool> {
        let pending: Vec<JobRow> = [
            JobStatus::ValidatingFiles,
            JobStatus::Queued,
            JobStatus::Running,
        ]
        .into_iter()
        .map(|s| self.jobs_in(s))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
        Ok(pending.iter().any(|j| {
            j.spec.training_file == id.as_str()
                || j.spec.validation_file.as_deref() == Some(id.as_str())
        }))
    }
}

fn page<T>(mut rows: Vec<T>, limit: usize) -> Page<T> {
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    Page {
        data: rows,
        has_more,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factory::job_spec;

    fn spec() -> JobSpec {
        let body = serde_json::json!({"model": "m", "training_file": "file-x", "seed": 1});
        job_spec::parse(&body).unwrap().spec
    }

    #[test]
    fn statuses_only_move_forward_and_a_cancelled_job_never_succeeds() {
        let dir =
            std::env::temp_dir().join(format!("openlora-factory-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = FactoryStore::open(&dir.join("f.sqlite")).unwrap();
        let (a, b) = (JobId::fresh(), JobId::fresh());
        s.insert_job(&a, &spec()).unwrap();
        s.insert_job(&b, &spec()).unwrap();
        assert!(s.set_status(&a, JobStatus::Queued).unwrap());
        assert!(!s.set_status(&a, JobStatus::ValidatingFiles).unwrap());
        assert!(s.set_status(&a, JobStatus::Running).unwrap());
        assert!(s.set_status(&a, JobStatus::Cancelled).unwrap());
        assert!(!s.succeed(&a, "m:ft", 5).unwrap());
        assert!(!s.set_status(&a, JobStatus::Failed).unwrap());
        let got = s.job(&a).unwrap().unwrap();
        assert_eq!(got.status, JobStatus::Cancelled);
        assert!(got.fine_tuned_model.is_none() && got.finished_at.is_some());
        // Newest first, paged after an id.
        let p = s.jobs(None, 1).unwrap();
        assert_eq!((p.data[0].id.clone(), p.has_more), (b.clone(), true));
        let p = s.jobs(Some(&b), 5).unwrap();
        assert_eq!(
            (p.data.len(), p.data[0].id.clone(), p.has_more),
            (1, a, false)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_oldest_unstarted_job_holds_the_queue_while_it_validates() {
        let dir = std::env::temp_dir().join(format!("openlora-factory-q-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = FactoryStore::open(&dir.join("f.sqlite")).unwrap();
        let (a, b) = (JobId::fresh(), JobId::fresh());
        s.insert_job(&a, &spec()).unwrap();
        s.insert_job(&b, &spec()).unwrap();
        // The younger job's files were validated first: the older one, still validating, is next.
        assert!(s.set_status(&b, JobStatus::Queued).unwrap());
        let next = s.oldest_unstarted().unwrap().unwrap();
        assert_eq!(
            (next.id, next.status),
            (a.clone(), JobStatus::ValidatingFiles)
        );
        assert!(s.set_status(&a, JobStatus::Queued).unwrap());
        assert_eq!(s.oldest_unstarted().unwrap().unwrap().id, a);
        assert!(s.set_status(&a, JobStatus::Running).unwrap());
        assert_eq!(s.oldest_unstarted().unwrap().unwrap().id, b);
        assert!(s.set_status(&b, JobStatus::Cancelled).unwrap());
        assert!(s.oldest_unstarted().unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_resume_drops_only_the_step_metrics_after_its_checkpoint() {
        let dir = std::env::temp_dir().join(format!("openlora-factory-ev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = FactoryStore::open(&dir.join("f.sqlite")).unwrap();
        let j = JobId::fresh();
        s.insert_job(&j, &spec()).unwrap();
        let step = |n: u64| serde_json::json!({"step": n, "train_loss": 1.0});
        s.add_event(
            &j,
            "info",
            "metrics",
            "before",
            Some(&serde_json::json!({"step": 0, "full_valid_loss": 2.0})),
        )
        .unwrap();
        for n in 1..=5 {
            s.add_event(&j, "info", "metrics", &format!("step {n}"), Some(&step(n)))
                .unwrap();
        }
        s.add_event(&j, "info", "message", "Checkpoint created at step 3", None)
            .unwrap();
        assert_eq!(s.drop_step_events_after(&j, 3).unwrap(), 2);
        let kept: Vec<String> = s
            .events(&j, None, 100)
            .unwrap()
            .data
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(
            kept,
            [
                "Checkpoint created at step 3",
                "step 3",
                "step 2",
                "step 1",
                "before"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
