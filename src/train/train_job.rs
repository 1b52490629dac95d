//! One whole fine-tuning run, from tokenized data to an adapter folder: resume from the last
//! checkpoint when asked, validation loss before and after, checkpoints on schedule, the final
//! PEFT adapter and `train_results.json`. Shared by `openlora train` and any job runner; progress
//! goes to a callback and a cancel flag is checked between steps. What always holds: the final
//! adapter files are written only by a run that finished (a cancelled or failed run leaves only
//! whole checkpoints), so nothing half-trained is ever served from `out`.

use super::batch::TrainExample;
use super::checkpoint::checkpoints;
use super::train_config::TrainConfig;
use super::train_model::TrainModel;
use super::trainer::{StepReport, Trainer};
use crate::error::{Error, Result};
use crate::exec::device::open_device;
use crate::exec::DeviceKind;
use crate::model::Model;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What a run reports while it goes.
pub enum JobEvent<'a> {
    /// Training starts (after a resume, at `first_step`).
    Started {
        examples: usize,
        steps: usize,
        first_step: usize,
        params: usize,
    },
    ValidationBefore(f64),
    /// A step is done; `tokens_per_s` over the run so far.
    Step {
        report: &'a StepReport,
        tokens_per_s: f64,
    },
    Checkpoint(&'a Path),
}

/// How a finished run went.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub steps: usize,
    pub tokens: usize,
    pub seconds: f64,
    pub validation_before: Option<f64>,
    pub validation_after: Option<f64>,
    pub history: Vec<serde_json::Value>,
}

impl TrainSummary {
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

/// The training device for a `--device` kind: `cpu` (the default) or `cuda[:N]` (an error naming
/// the fix in a build without CUDA or when the GPU does not answer); other kinds are refused.
pub fn training_device(kind: DeviceKind) -> Result<candle_core::Device> {
    match kind {
        DeviceKind::Cpu => Ok(candle_core::Device::Cpu),
        DeviceKind::Cuda(n) => open_device(Some(n)),
        other => Err(Error::invalid(
            "device",
            format!("training runs on `cpu` or `cuda[:N]`, not `{other}`"),
        )),
    }
}

/// A run's inputs.
pub struct TrainJob<'a> {
    pub model: &'a Model,
    pub cfg: TrainConfig,
    pub train: Vec<TrainExample>,
    pub valid: Option<Vec<TrainExample>>,
    pub out: PathBuf,
    /// Continue from the last checkpoint under `out` (if any).
    pub resume: bool,
    /// Where the run computes (`Device::Cpu`, or a CUDA device); files are written from the host.
    pub device: candle_core::Device,
}

impl TrainJob<'_> {
    /// Runs to the end; `Ok(None)` when `cancel` was set (checked between steps).
    pub fn run(
        self,
        on: &mut dyn FnMut(JobEvent),
        cancel: &AtomicBool,
    ) -> Result<Option<TrainSummary>> {
        let tm = TrainModel::on(
            self.model.config(),
            &self.model.weights,
            candle_core::DType::F32,
            &self.device,
        )?;
        let pad = self.model.eos_ids.first().copied().unwrap_or(0);
        let mut trainer = Trainer::new(&tm, self.cfg.clone(), self.train, pad)?;
        std::fs::create_dir_all(&self.out).map_err(|e| Error::io(&self.out, e))?;
        if self.resume {
            if let Some((_, dir)) = checkpoints(&self.out).last() {
                trainer.resume(dir)?;
            }
        }
        on(JobEvent::Started {
            examples: trainer.examples(),
            steps: trainer.total_steps(),
            first_step: trainer.steps_done(),
            params: trainer.params().num_params(),
        });
        let eval = |t: &Trainer| self.valid.as_ref().map(|v| t.eval_loss(v)).transpose();
        let validation_before = eval(&trainer)?;
        if let Some(l) = validation_before {
            on(JobEvent::ValidationBefore(l));
        }
        let started = Instant::now();
        let (mut tokens, mut history) = (0usize, Vec::new());
        let name = &self.model.name;
        while !trainer.done() {
            if cancel.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let report = trainer.train_step()?;
            tokens += report.tokens;
            let tokens_per_s = tokens as f64 / started.elapsed().as_secs_f64();
            on(JobEvent::Step {
                report: &report,
                tokens_per_s,
            });
            history.push(
                serde_json::json!({"step": report.step, "epoch": report.epoch,
                "loss": report.loss, "lr": report.lr, "grad_norm": report.grad_norm}),
            );
            let every = self.cfg.checkpoint_every;
            if (every > 0 && report.step % every == 0) || (every == 0 && trainer.at_epoch_end()) {
                on(JobEvent::Checkpoint(
                    &trainer.save_checkpoint(&self.out, name)?,
                ));
            }
        }
        let summary = TrainSummary {
            steps: trainer.total_steps(),
            tokens,
            seconds: started.elapsed().as_secs_f64(),
            validation_before,
            validation_after: eval(&trainer)?,
            history,
        };
        trainer.params().save_peft(&self.out, name)?;
        let results = serde_json::json!({
            "base_model": name,
            "steps": summary.steps,
            "train_tokens": summary.tokens,
            "seconds": summary.seconds,
            "tokens_per_second": summary.tokens_per_second(),
            "validation_loss_before": summary.validation_before,
            "validation_loss_after": summary.validation_after,
            "history": summary.history,
        });
        let text =
            serde_json::to_string_pretty(&results).map_err(|e| Error::Internal(e.to_string()))?;
        super::tensor_io::write_atomic(&self.out.join("train_results.json"), text.as_bytes())?;
        Ok(Some(summary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_devices_are_cpu_or_cuda_only() {
        assert!(training_device(DeviceKind::Cpu).unwrap().is_cpu());
        for kind in [DeviceKind::Auto, DeviceKind::CandleCpu] {
            let e = training_device(kind).unwrap_err().to_string();
            assert!(e.contains("cpu") && e.contains("cuda"), "{kind}: {e}");
        }
        // Without CUDA compiled in, asking for it says how to get it.
        #[cfg(not(feature = "cuda"))]
        assert!(training_device(DeviceKind::Cuda(0))
            .unwrap_err()
            .to_string()
            .contains("--features cuda"));
    }
}
