//! The Model Factory: OpenAI's fine-tuning API over the training engine (`crate::train`), inside
//! the serving process. Files (`file_store`) and jobs, events and checkpoints (`store`, SQLite)
//! persist under the data dir; a create request is checked once (`job_spec`); jobs are validated
//! on their own thread, then run one at a time by the runner (`runner`) on a bounded thread pool
//! (`--training-threads`) at the lowest CPU priority (`priority`) so serving goes on; a finished
//! job is deployed (`deploy`): its adapter registered hot under `fine_tuned_model`, its training
//! records indexed as a datanet for attribution, its terms written as the adapter's manifest and,
//! with the on-chain registry, the adapter and its datanet registered on chain before it is
//! served (`onchain`). What always holds: a job's status only moves forward; a cancelled or
//! failed job never registers an adapter; an adapter folder is renamed into place whole before it
//! is registered; after a restart a running job resumes from its last checkpoint and succeeded
//! jobs' adapters are registered again.

mod deploy;
mod file_store;
pub mod ids;
pub mod job_spec;
pub mod objects;
mod onchain;
mod priority;
mod runner;
pub mod store;

pub use file_store::check_training_text;
pub use ids::{CheckpointId, EventId, FileId, JobId};
pub use onchain::FactoryChain;
pub use priority::TRAINING_NICE;
pub use store::{FactoryStore, FileRow, JobRow, JobStatus, Page};

use crate::clock::unix_now;
use crate::error::{Error, Result};
use crate::ledger::Meter;
use crate::lora::AdapterRegistry;
use crate::metrics::Metrics;
use crate::model::Model;
use file_store::FileStore;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};

/// The one purpose the factory accepts.
pub const FINE_TUNE: &str = "fine-tune";

pub struct FactoryOptions {
    /// Where files, jobs and fine-tuned adapters live.
    pub data_dir: PathBuf,
    /// Threads of the training pool (serving keeps the rest).
    pub training_threads: usize,
    /// Nice value of the training threads (`TRAINING_NICE`, the lowest priority, by default).
    pub training_nice: i32,
    /// Largest accepted upload, in bytes.
    pub max_file_bytes: usize,
    /// With the on-chain registry: where finished jobs' adapters and datanets are registered.
    pub chain: Option<FactoryChain>,
    /// Where jobs train: the serving CUDA device when serving runs on one, else the CPU.
    pub training_device: candle_core::Device,
}

pub struct Factory {
    pub store: FactoryStore,
    files: FileStore,
    opts: FactoryOptions,
    model: Arc<Model>,
    registry: Arc<AdapterRegistry>,
    meter: Option<Arc<Meter>>,
    metrics: Arc<Metrics>,
    pool: rayon::ThreadPool,
    /// Set when there may be a job to run; the runner waits on it.
    wake: (Mutex<bool>, Condvar),
    /// Cancel flags of the job running now.
    cancels: Mutex<HashMap<JobId, Arc<AtomicBool>>>,
    /// Held while a job's final status is decided (cancel vs. deploy), so one of them wins whole.
    finish: Mutex<()>,
    /// The factory itself, for the threads it starts.
    me: Weak<Factory>,
}

impl Factory {
    pub fn open(
        opts: FactoryOptions,
        model: Arc<Model>,
        registry: Arc<AdapterRegistry>,
        meter: Option<Arc<Meter>>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>> {
        let dir = &opts.data_dir;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let store = FactoryStore::open(&dir.join("factory.sqlite"))?;
        let files = FileStore::open(dir.join("files"))?;
        let nice = opts.training_nice;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.training_threads.max(1))
            .thread_name(|i| format!("openlora-train-{i}"))
            .start_handler(move |_| priority::lower_this_thread(nice))
            .build()
            .map_err(|e| Error::Internal(format!("training pool: {e}")))?;
        Ok(Arc::new_cyclic(|me| Factory {
            store,
            files,
            opts,
            model,
            registry,
            meter,
            metrics,
            pool,
            wake: (Mutex::new(true), Condvar::new()),
            cancels: Mutex::new(HashMap::new()),
            finish: Mutex::new(()),
            me: me.clone(),
        }))
    }

    pub fn max_file_bytes(&self) -> usize {
        self.opts.max_file_bytes
    }

    /// Registers the adapters of succeeded jobs, re-validates jobs caught validating, and starts
    /// the runner (which resumes a job caught running).
    pub fn start(self: &Arc<Self>) -> Result<()> {
        let mut chain_reachable = true;
        for j in self.store.jobs_in(JobStatus::Succeeded)? {
            if let Err(e) = self.redeploy(&j, &mut chain_reachable) {
                tracing::warn!(job = %j.id, error = %e, "fine-tuned adapter not registered again");
            }
        }
        for j in self.store.jobs_in(JobStatus::ValidatingFiles)? {
            self.spawn_validation(j.id);
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("openlora-factory".into())
            .spawn(move || me.run_forever())
            .map_err(|e| Error::Internal(format!("factory thread: {e}")))?;
        Ok(())
    }

    fn notify(&self) {
        let (lock, cv) = &self.wake;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }

    pub(crate) fn event(&self, job: &JobId, kind: &str, message: &str, data: Option<Value>) {
        let level = if kind == "error" { "error" } else { "info" };
        let kind = if kind == "metrics" {
            "metrics"
        } else {
            "message"
        };
        if let Err(e) = self
            .store
            .add_event(job, level, kind, message, data.as_ref())
        {
            tracing::warn!(job = %job, error = %e, "fine-tuning event not stored");
        }
    }

    /// Stores an upload (checked first); `filename` is metadata only.
    pub fn upload(&self, filename: &str, purpose: &str, bytes: &[u8]) -> Result<FileRow> {
        if purpose != FINE_TUNE {
            return Err(Error::invalid(
                "purpose",
                format!("`{purpose}` is not supported here; use \"{FINE_TUNE}\""),
            ));
        }
        if bytes.len() > self.opts.max_file_bytes {
            return Err(Error::TooLarge(format!(
                "the file is {} bytes; the limit is {} bytes",
                bytes.len(),
                self.opts.max_file_bytes
            )));
        }
        let examples = check_training_text(bytes)?;
        let row = FileRow {
            id: FileId::fresh(),
            bytes: bytes.len() as i64,
            created_at: unix_now() as i64,
            filename: filename
                .chars()
                .filter(|c| !c.is_control())
                .take(255)
                .collect(),
            purpose: purpose.to_string(),
            examples: examples as i64,
        };
        self.files.save(&row.id, bytes)?;
        self.store.insert_file(&row)?;
        Ok(row)
    }

    pub fn file(&self, id: &str) -> Result<FileRow> {
        FileId::parse(id)
            .map(|f| self.store.file(&f))
            .transpose()?
            .flatten()
            .ok_or_else(|| Error::no_such("file_id", format!("No such File object: {id}")))
    }

    pub fn file_content(&self, id: &str) -> Result<Vec<u8>> {
        let f = self.file(id)?;
        self.files.read(&f.id)
    }

    /// Deletes a file no unfinished job uses (409 otherwise).
    pub fn delete_file(&self, id: &str) -> Result<()> {
        let f = self.file(id)?;
        if self.store.file_in_use(&f.id)? {
            return Err(Error::conflict(
                "file_id",
                format!("{id} is used by a fine-tuning job that has not finished"),
            ));
        }
        self.store.delete_file(&f.id)?;
        self.files.remove(&f.id);
        Ok(())
    }

    /// A file given as `param` of a job: it exists and is for fine-tuning.
    fn job_file(&self, id: &str, param: &str) -> Result<FileRow> {
        let f = self
            .file(id)
            .map_err(|_| Error::no_such(param, format!("No such File object: {id}")))?;
        if f.purpose != FINE_TUNE {
            return Err(Error::invalid(
                param,
                format!("{id} has purpose `{}`, not `{FINE_TUNE}`", f.purpose),
            ));
        }
        Ok(f)
    }

    /// Checks and stores a job (status `validating_files`), then validates its files in the
    /// background.
    pub fn create_job(&self, body: &Value) -> Result<JobRow> {
        let req = job_spec::parse(body)?;
        let mut spec = req.spec;
        if spec.model != self.model.name {
            return Err(Error::no_such(
                "model",
                format!("The model `{}` does not exist or cannot be fine-tuned here (this server fine-tunes `{}`)", spec.model, self.model.name),
            ));
        }
        let train = self.job_file(&spec.training_file, "training_file")?;
        if let Some(v) = &spec.validation_file {
            self.job_file(v, "validation_file")?;
        }
        if req.auto_batch {
            spec.batch_size = spec.batch_size.min(train.examples as u64).max(1);
        } else if spec.batch_size > train.examples as u64 {
            return Err(Error::invalid(
                "batch_size",
                format!(
                    "{} is more than the {} examples in the training file",
                    spec.batch_size, train.examples
                ),
            ));
        }
        if let Some(d) = &spec.datanet {
            deploy::check_contributors(&self.files.read_text(&train.id)?, d)?;
        }
        let id = JobId::fresh();
        self.store.insert_job(&id, &spec)?;
        self.event(
            &id,
            "message",
            &format!("Created fine-tuning job: {id}"),
            None,
        );
        self.spawn_validation(id.clone());
        self.store
            .job(&id)?
            .ok_or_else(|| Error::Internal("job vanished".into()))
    }

    pub fn job(&self, id: &str) -> Result<JobRow> {
        JobId::parse(id)
            .map(|j| self.store.job(&j))
            .transpose()?
            .flatten()
            .ok_or_else(|| {
                Error::no_such(
                    "fine_tuning_job_id",
                    format!("No such fine-tuning job: {id}"),
                )
            })
    }

    /// Cancels a job that has not finished; a running one stops after its current step and
    /// never registers its adapter.
    pub fn cancel(&self, id: &str) -> Result<JobRow> {
        let _finish = self.finish.lock().unwrap_or_else(|p| p.into_inner());
        let job = self.job(id)?;
        if job.status.is_final() {
            return Err(Error::invalid(
                "fine_tuning_job_id",
                format!(
                    "the job has already finished (status {})",
                    job.status.as_str()
                ),
            ));
        }
        self.store.set_status(&job.id, JobStatus::Cancelled)?;
        if let Some(flag) = self
            .cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&job.id)
        {
            flag.store(true, Ordering::Relaxed);
        }
        self.event(&job.id, "message", "Fine-tuning job cancelled", None);
        self.job(id)
    }

    /// The `fine_tuned_model` a job gets (or got) when it succeeds.
    pub fn fine_tuned_name(&self, job: &JobRow) -> String {
        format!("{}:{}", self.model.name, deploy::adapter_name(job))
    }

    /// The folder a job trains in (checkpoints, the final adapter before deployment).
    fn work_dir(&self, id: &JobId) -> PathBuf {
        self.opts.data_dir.join("jobs").join(id.hex())
    }

    /// Validates a job's files on a thread of its own: tokenized through the model's template
    /// (a bad example fails the job, naming it), then queued.
    fn spawn_validation(&self, id: JobId) {
        let run = |f: &Factory, id: &JobId| -> Result<()> {
            let Some(job) = f.store.job(id)? else {
                return Ok(());
            };
            f.event(
                id,
                "message",
                &format!("Validating training file: {}", job.spec.training_file),
                None,
            );
            let checked = f.load_data(&job);
            if let Err(e) = checked {
                let (param, code) = match &e {
                    Error::InvalidRequest { param, .. } => (param.clone(), "invalid_training_file"),
                    _ => (String::new(), "validation_failed"),
                };
                let error = json!({"code": code, "message": e.to_string(), "param": (!param.is_empty()).then_some(param)});
                f.store.fail(id, &error)?;
                f.event(id, "error", &format!("Validation failed: {e}"), None);
                // A younger job may be waiting behind this one.
                f.notify();
                return Ok(());
            }
            if f.store.set_status(id, JobStatus::Queued)? {
                f.event(
                    id,
                    "message",
                    "Files validated, moving job to queued state",
                    None,
                );
                f.notify();
            }
            Ok(())
        };
        let ptr = self.me.upgrade();
        std::thread::Builder::new()
            .name("openlora-validate".into())
            .spawn(move || {
                if let Some(f) = ptr {
                    if let Err(e) = run(&f, &id) {
                        tracing::warn!(job = %id, error = %e, "validating a fine-tuning job");
                    }
                }
            })
            .map_err(|e| tracing::warn!("validation thread: {e}"))
            .ok();
    }
}
