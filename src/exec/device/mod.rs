//! The device executor: the forward pass written once over candle `Tensor`s on a candle `Device`.
//! On `Device::Cuda` it is the GPU engine; on `Device::Cpu` (`--device candle-cpu`, f32) the very
//! same code is its twin in CI and must produce what the CPU f32 executor produces. It owns the
//! weights placed on the device (`weights`), the paged KV cache as device tensors in the engine's
//! block layout (`kv_cache`) and the adapter slot pool filled from the pager's `SlotTable` when a
//! slot's generation changes (`slot_pool`). Each step uploads the plan's indices once
//! (`step_index`) and copies back only the logit rows. What candle lacks — paged attention, the KV
//! write, SGMV — are custom ops in `ops::device`.

mod forward;
mod kv_cache;
mod slot_pool;
mod step_index;
mod weights;

pub use slot_pool::SlotPool;

use super::{ExecConfig, Executor, KvDtype, StepPlan};
use crate::error::{Error, Result};
use crate::lora::SlotTable;
use crate::model::{Model, WeightDtype};
use candle_core::{DType, Device};
use forward::{DeviceModel, StepInputs};
use kv_cache::DeviceKv;
use std::sync::Arc;
use step_index::{LoraRows, StepIndex};
use weights::DeviceWeights;

pub struct DeviceExecutor {
    device: Device,
    model: DeviceModel,
    kv: DeviceKv,
    pool: SlotPool,
    slots: Arc<SlotTable>,
    /// Steps started; every step before the current one has completed (`step` returns only after
    /// its logits are on the host).
    step: u64,
}

fn candle(e: candle_core::Error) -> Error {
    Error::Internal(format!("device executor: {e}"))
}

/// The candle device for a `--device` name, or why it cannot be had.
pub fn open_device(cuda: Option<usize>) -> Result<Device> {
    match cuda {
        None => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        Some(n) => Device::new_cuda(n).map_err(|e| Error::Unavailable(format!("CUDA device {n}: {e}"))),
        #[cfg(not(feature = "cuda"))]
        Some(_) => Err(Error::Unavailable(
            "this build has no CUDA support: rebuild with `--features cuda` (see scripts/cuda-build.sh), or use --device cpu".into(),
        )),
    }
}

impl DeviceExecutor {
    /// The executor on `device`: f32 on the CPU twin; on CUDA f32 with `--dtype f32`, else bf16.
    pub fn new(
        model: &Arc<Model>,
        cfg: &ExecConfig,
        slots: Arc<SlotTable>,
        device: Device,
    ) -> Result<Self> {
        let m = model.config();
        let dtype = match (device.is_cpu(), model.load_options.dtype) {
            (true, _) | (false, WeightDtype::F32) => DType::F32,
            (false, _) => DType::BF16,
        };
        let weights = DeviceWeights::place(&model.weights, m.vocab_size, m.hidden, &device, dtype)
            .map_err(candle)?;
        let kv_dtype = match (cfg.kv_dtype, dtype) {
            (KvDtype::Auto, DType::F32) => KvDtype::F32,
            (KvDtype::Auto, _) => KvDtype::BF16,
            (d, _) => d,
        };
        let blocks = (cfg.num_blocks, cfg.block_size);
        let kv = DeviceKv::new(kv_dtype, m, blocks, &device).map_err(candle)?;
        Ok(DeviceExecutor {
            model: DeviceModel::new(m.clone(), weights, &device).map_err(candle)?,
            kv,
            pool: SlotPool::new(slots.capacity(), cfg.max_lora_rank),
            slots,
            device,
            step: 0,
        })
    }

    /// The slot pool (tests read its upload count).
    pub fn pool(&self) -> &SlotPool {
        &self.pool
    }

    /// Syncs the plan's adapter slots into the pool; the plan's LoRA segments as index rows.
    fn sync_slots(&mut self, plan: &StepPlan) -> Result<Vec<LoraRows>> {
        let completed = self.step - 1;
        let mut rows = Vec::with_capacity(plan.lora.len());
        for seg in &plan.lora {
            for (slot, _) in &seg.terms {
                let dt = self.model.weights.dtype;
                self.pool
                    .sync(*slot, &self.slots, self.step, completed, &self.device, dt)?;
            }
            rows.push((
                seg.rows.clone(),
                seg.terms.iter().map(|(s, w)| (s.0, *w)).collect(),
            ));
        }
        Ok(rows)
    }
}

impl Executor for DeviceExecutor {
    fn step(&mut self, plan: &StepPlan) -> Result<Vec<f32>> {
        self.step += 1;
        for c in &plan.block_copies {
            self.kv
                .copy_block(c.src as usize, c.dst as usize)
                .map_err(candle)?;
        }
        let lora = self.sync_slots(plan)?;
        let index = StepIndex::upload(plan, &lora, &self.device).map_err(candle)?;
        let inputs = StepInputs {
            index: &index,
            kv: &self.kv,
            pool: (!lora.is_empty()).then_some(&self.pool),
        };
        let logits = self.model.forward(&inputs).map_err(candle)?;
        match logits {
            Some(l) => l
                .to_dtype(DType::F32)
                .and_then(|l| l.flatten_all()?.to_vec1())
                .map_err(candle),
            None => Ok(Vec::new()),
        }
    }

    fn describe(&self) -> String {
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        format!(
            "device executor on {:?}; weights {:.0} MiB ({:?}); KV cache {:?}, {} blocks of {} ({:.0} MiB); adapter pool {} slots, rank <= {}",
            self.device.location(),
            mib(self.model.weights.bytes),
            self.model.weights.dtype,
            self.kv.dtype,
            self.kv.num_blocks,
            self.kv.block_size,
            mib(self.kv.bytes()),
            self.pool.lora.len(),
            self.pool.max_rank,
        )
    }
}
