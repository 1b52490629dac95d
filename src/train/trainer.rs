//! The training loop: each optimizer step takes `batch_size * grad_accum` examples of the epoch's
//! shuffled order, runs them as `grad_accum` padded forward passes, sums their gradients of the
//! step's mean target NLL, clips the global norm and applies AdamW at the schedule's rate.
//! Everything random (LoRA init, each epoch's order, each step's dropout masks) is drawn from the
//! seed and the step's index alone, so a run is repeatable and a resumed run equals an
//! uninterrupted one.

use super::adamw::{clip, AdamW};
use super::batch::{Batch, TrainExample};
use super::dropout::Dropout;
use super::lora_params::LoraParams;
use super::lr_schedule::LrSchedule;
use super::tensor_io::{cerr, flat, scalar};
use super::train_config::TrainConfig;
use super::train_model::TrainModel;
use crate::error::{Error, Result};
use candle_core::DType;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// What one optimizer step did.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// 1-based index of the step just done.
    pub step: usize,
    pub total_steps: usize,
    pub epoch: usize,
    /// Mean NLL per target token of the step's examples (before the update).
    pub loss: f64,
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Real tokens run through the model (forward and backward).
    pub tokens: usize,
}

pub struct Trainer<'m> {
    pub(super) model: &'m TrainModel,
    pub(super) cfg: TrainConfig,
    pub(super) data: Vec<TrainExample>,
    pad_id: u32,
    pub(super) params: LoraParams,
    pub(super) opt: AdamW,
    schedule: LrSchedule,
    pub(super) step: usize,
    steps_per_epoch: usize,
}

/// A seed for stream `b` of item `a` derived from the run's seed (splitmix64 finalizer).
pub(super) fn derive_seed(seed: u64, a: u64, b: u64) -> u64 {
    let mut z =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl<'m> Trainer<'m> {
    /// A fresh run over `data` (already tokenized; every example has targets).
    pub fn new(
        model: &'m TrainModel,
        cfg: TrainConfig,
        data: Vec<TrainExample>,
        pad_id: u32,
    ) -> Result<Self> {
        let cfg = cfg.checked()?;
        if data.is_empty() || data.iter().any(|e| e.targets() == 0) {
            return Err(Error::invalid(
                "training_file",
                "every example needs assistant tokens to train on",
            ));
        }
        let params = LoraParams::init_on(
            model.config(),
            cfg.lora.clone(),
            cfg.seed,
            DType::F32,
            model.device(),
        )?;
        let sizes: Vec<usize> = params.named().iter().map(|(_, v)| v.elem_count()).collect();
        let steps_per_epoch = data.len().div_ceil(cfg.examples_per_step());
        let total = steps_per_epoch * cfg.epochs;
        let schedule = LrSchedule {
            peak: cfg.lr,
            warmup: (cfg.warmup_ratio * total as f64).ceil() as usize,
            total,
            decay: cfg.decay,
        };
        Ok(Trainer {
            model,
            opt: AdamW::new(cfg.adamw, &sizes),
            cfg,
            data,
            pad_id,
            params,
            schedule,
            step: 0,
            steps_per_epoch,
        })
    }

    pub fn total_steps(&self) -> usize {
        self.schedule.total
    }

    /// Steps done so far.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    pub fn done(&self) -> bool {
        self.step >= self.total_steps()
    }

    /// Training examples.
    pub fn examples(&self) -> usize {
        self.data.len()
    }

    pub fn params(&self) -> &LoraParams {
        &self.params
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// True when the step just done ends an epoch.
    pub fn at_epoch_end(&self) -> bool {
        self.step > 0 && self.step.is_multiple_of(self.steps_per_epoch)
    }

    /// The micro-batches (example indices) of step `step`: a slice of its epoch's shuffled
    /// order, sorted by length (less padding), cut into `batch_size` pieces.
    fn step_examples(&self, step: usize) -> Vec<Vec<usize>> {
        let epoch = step / self.steps_per_epoch;
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(derive_seed(
            self.cfg.seed,
            epoch as u64,
            1,
        )));
        let per = self.cfg.examples_per_step();
        let i = step % self.steps_per_epoch;
        let mut chunk = order[i * per..((i + 1) * per).min(order.len())].to_vec();
        chunk.sort_by_key(|&j| (self.data[j].ids.len(), j));
        chunk
            .chunks(self.cfg.batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// Runs the next optimizer step.
    pub fn train_step(&mut self) -> Result<StepReport> {
        if self.done() {
            return Err(Error::Internal("training already finished".into()));
        }
        let step = self.step;
        let micro: Vec<Batch> = self
            .step_examples(step)
            .iter()
            .map(|ids| {
                Batch::new(
                    &ids.iter().map(|&j| &self.data[j]).collect::<Vec<_>>(),
                    self.pad_id,
                )
            })
            .collect();
        let targets: usize = micro.iter().map(Batch::targets).sum();
        let named = self.params.named();
        let mut grads: Vec<Vec<f32>> = named
            .iter()
            .map(|(_, v)| vec![0.0; v.elem_count()])
            .collect();
        let (mut loss_sum, mut tokens) = (0.0, 0);
        for (i, batch) in micro.iter().enumerate() {
            let mut dropout = (self.cfg.lora.dropout > 0.0).then(|| {
                Dropout::new(
                    self.cfg.lora.dropout,
                    derive_seed(self.cfg.seed, step as u64, 2 + i as u64),
                )
            });
            let loss = self
                .model
                .loss(batch, Some(&self.params), dropout.as_mut())?;
            loss_sum += scalar(&loss)?;
            tokens += batch.tokens();
            let store = (loss / targets as f64)
                .and_then(|l| l.backward())
                .map_err(cerr)?;
            for ((_, var), acc) in named.iter().zip(grads.iter_mut()) {
                if let Some(g) = store.get(var) {
                    acc.iter_mut().zip(flat(g)?).for_each(|(a, g)| *a += g);
                }
            }
        }
        let grad_norm = clip(&mut grads, self.cfg.max_grad_norm);
        let lr = self.schedule.lr(step);
        let vars: Vec<_> = named.iter().map(|(_, v)| *v).collect();
        self.opt.step(&vars, &grads, lr)?;
        self.step += 1;
        Ok(StepReport {
            step: self.step,
            total_steps: self.total_steps(),
            epoch: step / self.steps_per_epoch + 1,
            loss: loss_sum / targets as f64,
            lr,
            grad_norm,
            tokens,
        })
    }

    /// Mean NLL per target token of `data` under the current adapter (no dropout).
    pub fn eval_loss(&self, data: &[TrainExample]) -> Result<f64> {
        let (mut sum, mut n) = (0.0, 0);
        let mut order: Vec<&TrainExample> = data.iter().collect();
        order.sort_by_key(|e| e.ids.len());
        for chunk in order.chunks(self.cfg.batch_size) {
            let batch = Batch::new(chunk, self.pad_id);
            if batch.targets() == 0 {
                continue;
            }
            let loss = self.model.loss(&batch, Some(&self.params), None)?;
            sum += scalar(&loss)?;
            n += batch.targets();
        }
        Ok(if n == 0 { f64::NAN } else { sum / n as f64 })
    }
}
