//! The job runner: one thread taking jobs one at a time (a job caught `running` by a restart
//! first, then jobs in creation order, each once its files are validated), training each with
//! `TrainJob` inside the factory's bounded thread pool (candle's matmuls run on the pool they are
//! called from), storing a `metrics` event per step and a checkpoint row per checkpoint, and
//! deploying what finished. What always holds: a job resumes from the last whole checkpoint in its
//! work folder, and each step has one `metrics` event (a resumed job replaces those of the steps it
//! trains again); a cancelled run stops between steps and leaves no adapter; a failed run records
//! its error.

use super::store::JobRow;
use super::{Factory, JobId, JobStatus};
use crate::error::Result;
use crate::train::{load_examples, JobEvent, TrainExample, TrainJob};
use serde_json::json;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Tokens per example (longer ones are truncated).
const MAX_SEQ_LEN: usize = 1024;

/// A job's tokenized data.
pub(super) struct JobData {
    pub train: Vec<TrainExample>,
    pub valid: Option<Vec<TrainExample>>,
    pub dropped: usize,
}

impl Factory {
    pub(super) fn run_forever(self: Arc<Self>) {
        loop {
            {
                let (lock, cv) = &self.wake;
                let mut pending = lock.lock().unwrap_or_else(|p| p.into_inner());
                while !*pending {
                    pending = cv.wait(pending).unwrap_or_else(|p| p.into_inner());
                }
                *pending = false;
            }
            loop {
                match self.next_job() {
                    Ok(Some(job)) => self.run_job(job),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "fine-tuning queue");
                        break;
                    }
                }
            }
        }
    }

    /// A job caught running, else the oldest job not yet started if it is queued: jobs start in
    /// the order they were created, so a younger job whose files were validated first waits for
    /// an older one still validating (its validation wakes the runner either way).
    fn next_job(&self) -> Result<Option<JobRow>> {
        if let Some(j) = self.store.jobs_in(JobStatus::Running)?.into_iter().next() {
            return Ok(Some(j));
        }
        Ok(self
            .store
            .oldest_unstarted()?
            .filter(|j| j.status == JobStatus::Queued))
    }

    pub(super) fn load_data(&self, job: &JobRow) -> Result<JobData> {
        let text = |id: &str| -> Result<String> {
            let f = self.file(id)?;
            self.files.read_text(&f.id)
        };
        let (train, dropped) = load_examples(
            &self.model,
            &text(&job.spec.training_file)?,
            "training_file",
            MAX_SEQ_LEN,
        )?;
        let valid = match &job.spec.validation_file {
            Some(v) => {
                Some(load_examples(&self.model, &text(v)?, "validation_file", MAX_SEQ_LEN)?.0)
            }
            None => None,
        };
        Ok(JobData {
            train,
            valid,
            dropped,
        })
    }

    fn run_job(&self, job: JobRow) {
        let id = job.id.clone();
        let resumed = job.status == JobStatus::Running;
        if !resumed {
            match self.store.set_status(&id, JobStatus::Running) {
                Ok(true) => self.event(&id, "message", "Fine-tuning job started", None),
                _ => return,
            }
        }
        let cancel = Arc::new(AtomicBool::new(false));
        self.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), cancel.clone());
        let result = self.train(&job, resumed, &cancel);
        self.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let outcome = match result {
            Ok(Some(tokens)) => self.deploy(&job, tokens),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            let error = json!({"code": "training_failed", "message": e.to_string(), "param": null});
            if self.store.fail(&id, &error).unwrap_or(false) {
                self.event(&id, "error", &format!("Fine-tuning job failed: {e}"), None);
            }
            tracing::warn!(job = %id, error = %e, "fine-tuning job failed");
        }
        if let Ok(Some(j)) = self.store.job(&id) {
            if j.status.is_final() {
                let _ = std::fs::remove_dir_all(self.work_dir(&id));
            }
        }
    }

    /// Trains `job` to the end; `Ok(Some(trained tokens))`, or `Ok(None)` when cancelled.
    fn train(&self, job: &JobRow, resumed: bool, cancel: &AtomicBool) -> Result<Option<u64>> {
        let id = &job.id;
        let data = self.load_data(job)?;
        if data.dropped > 0 {
            let m = format!(
                "{} examples have no assistant token within {MAX_SEQ_LEN} tokens: skipped",
                data.dropped
            );
            self.event(id, "message", &m, None);
        }
        let cfg = job.spec.train_config(data.train.len())?;
        let out = self.work_dir(id);
        let base_tokens = match resumed {
            true => last_checkpoint_tokens(self, id),
            false => {
                let _ = std::fs::remove_dir_all(&out);
                0
            }
        };
        let mut tokens = base_tokens;
        let mut last_loss = f64::NAN;
        let mut first = 0usize;
        let mut on = |ev: JobEvent| match ev {
            JobEvent::Started {
                examples,
                steps,
                first_step,
                params,
            } => {
                first = first_step;
                if first_step > 0 {
                    // Steps after the checkpoint were recorded by the run that was stopped.
                    let _ = self.store.drop_step_events_after(id, first_step as u64);
                }
                let m = match first_step {
                    0 => format!(
                        "Training {params} LoRA values on {examples} examples: {steps} steps"
                    ),
                    s => format!("Resumed from the checkpoint at step {s} of {steps}"),
                };
                self.event(id, "message", &m, None);
            }
            JobEvent::ValidationBefore(l) if first == 0 => {
                let m = format!("Validation loss before training: {l:.4}");
                self.event(
                    id,
                    "metrics",
                    &m,
                    Some(json!({"step": 0, "full_valid_loss": l})),
                );
            }
            JobEvent::ValidationBefore(_) => {}
            JobEvent::Step { report: r, .. } => {
                tokens += r.tokens as u64;
                last_loss = r.loss;
                let m = format!(
                    "Step {}/{}: training loss={:.4}",
                    r.step, r.total_steps, r.loss
                );
                let data = json!({"step": r.step, "total_steps": r.total_steps, "train_loss": r.loss,
                    "learning_rate": r.lr, "epoch": r.epoch, "trained_tokens": tokens});
                self.event(id, "metrics", &m, Some(data));
                let _ = self.store.set_trained_tokens(id, tokens);
            }
            JobEvent::Checkpoint(dir) => {
                let step = step_of(dir);
                let metrics = json!({"step": step, "train_loss": last_loss});
                let _ = self.store.add_checkpoint(id, step, tokens, &metrics);
                self.event(
                    id,
                    "message",
                    &format!("Checkpoint created at step {step}"),
                    None,
                );
            }
        };
        let run = TrainJob {
            model: &self.model,
            cfg,
            train: data.train,
            valid: data.valid,
            out,
            resume: resumed,
            device: self.opts.training_device.clone(),
        };
        let summary = self.pool.install(|| run.run(&mut on, cancel))?;
        let Some(summary) = summary else {
            return Ok(None);
        };
        if let Some(after) = summary.validation_after {
            let before = summary.validation_before.unwrap_or(f64::NAN);
            let m = format!("Validation loss after training: {after:.4}");
            let data = json!({"step": summary.steps, "full_valid_loss": after, "valid_loss_before": before});
            self.event(id, "metrics", &m, Some(data));
        }
        Ok(Some(tokens))
    }
}

/// Steps done by the checkpoint in `dir` (`checkpoint-NNNNNN`).
fn step_of(dir: &std::path::Path) -> u64 {
    dir.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("checkpoint-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Tokens trained up to the job's last recorded checkpoint.
fn last_checkpoint_tokens(f: &Factory, id: &JobId) -> u64 {
    f.store
        .checkpoints(id, None, 1)
        .ok()
        .and_then(|p| p.data.into_iter().next())
        .map_or(0, |c| c.trained_tokens.max(0) as u64)
}
