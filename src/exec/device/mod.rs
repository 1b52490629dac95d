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
mod memory_plan;
mod random_model;
mod slot_pool;
mod step_index;
mod weights;

pub use memory_plan::MemoryPlan;
pub use slot_pool::SlotPool;

use super::{ExecConfig, Executor, KvDtype, StepPlan};
use crate::error::{Error, Result};
use crate::lora::SlotTable;
use crate::model::{Model, ModelConfig, Proj, WeightDtype};
use crate::ops::device::LoraPool;
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

/// The compute dtype and the concrete KV dtype of the device executor: f32 on the CPU twin (it
/// must compute what the CPU f32 executor computes) and with `--dtype f32`, else bf16; the KV
/// cache follows the compute dtype unless `--kv-cache-dtype` names one. Start-up sizing and the
/// allocation both read this, so the cache is sized in the dtype it is allocated in.
pub fn dtypes(on_cpu: bool, weights: WeightDtype, kv: KvDtype) -> (DType, KvDtype) {
    let dtype = match (on_cpu, weights) {
        (true, _) | (false, WeightDtype::F32) => DType::F32,
        (false, _) => DType::BF16,
    };
    let kv = match (kv, dtype) {
        (KvDtype::Auto, DType::F32) => KvDtype::F32,
        (KvDtype::Auto, _) => KvDtype::BF16,
        (d, _) => d,
    };
    (dtype, kv)
}

/// `(in, out)` of each projection, by `Proj::index()`.
fn proj_dims(m: &ModelConfig) -> [(usize, usize); 7] {
    Proj::ALL.map(|p| {
        let (o, i) = m.proj_shape(p);
        (i, o)
    })
}

/// What the device executor will place, before placing it: `(weight bytes, adapter pool bytes,
/// bytes of one KV block)` for `model` on a CPU twin or a GPU with `slots` adapter slots.
pub fn planned_bytes(
    model: &Model,
    on_cpu: bool,
    cfg: &ExecConfig,
    slots: usize,
) -> (usize, usize, usize) {
    let m = model.config();
    let (dtype, kv) = dtypes(on_cpu, model.load_options.dtype, cfg.kv_dtype);
    let projections: usize = (model.weights.layers.iter().flat_map(|l| &l.proj))
        .map(|p| weights::linear_bytes(&p.w, (p.out, p.inp), dtype, cfg.qmatmul))
        .sum();
    let tied = model.weights.lm_head.is_none();
    let embed = m.vocab_size * m.hidden * if tied { 1 } else { 2 };
    let weights = projections + embed * dtype.size_in_bytes();
    let pool = LoraPool::planned_bytes(m.layers, proj_dims(m), slots, cfg.max_lora_rank, dtype);
    (weights, pool, kv.bytes_per_token(m) * cfg.block_size)
}

/// The bytes a `--gpu-memory-utilization` fraction applies to: the GPU's total memory on CUDA;
/// on the CPU twin a stand-in, the host's MemAvailable (so the sizing code runs in CI).
pub fn device_memory(device: &Device) -> Result<usize> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => d
            .cuda_stream()
            .context()
            .total_mem()
            .map_err(|e| Error::Unavailable(format!("CUDA memory query: {e}"))),
        _ => {
            let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
            let kib = info
                .lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok());
            kib.map(|k| k << 10).ok_or_else(|| {
                Error::Unavailable(
                    "MemAvailable missing from /proc/meminfo (the CPU twin's memory stand-in)"
                        .into(),
                )
            })
        }
    }
}

/// Plans the memory of the device `cfg.device` names (`--gpu-memory-utilization`): weights and
/// the adapter pool of `slots` slots first, the KV cache the rest (capped by `kv_cap` bytes).
pub fn plan_memory(
    model: &Model,
    cfg: &ExecConfig,
    slots: usize,
    utilization: f64,
    kv_cap: Option<usize>,
) -> Result<MemoryPlan> {
    let dev = open_device(match cfg.device {
        super::DeviceKind::Cuda(n) => Some(n),
        _ => None,
    })?;
    let total = device_memory(&dev)?;
    let (weights, pool, block) = planned_bytes(model, dev.is_cpu(), cfg, slots);
    let mut plan = MemoryPlan::new(total, utilization, weights, pool, block, kv_cap)?;
    plan.pool_shape = (slots, cfg.max_lora_rank);
    Ok(plan)
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
        let (dtype, kv_dtype) = dtypes(device.is_cpu(), model.load_options.dtype, cfg.kv_dtype);
        let (v, h, q) = (m.vocab_size, m.hidden, cfg.qmatmul);
        let weights =
            DeviceWeights::place(&model.weights, v, h, &device, dtype, q).map_err(candle)?;
        DeviceExecutor::assemble(m, weights, kv_dtype, cfg, slots, device)
    }

    /// The executor around `weights`: the KV cache and the adapter pool as `cfg` and `slots`
    /// size them, the pool in the weights' dtype.
    fn assemble(
        m: &ModelConfig,
        weights: DeviceWeights,
        kv_dtype: KvDtype,
        cfg: &ExecConfig,
        slots: Arc<SlotTable>,
        device: Device,
    ) -> Result<Self> {
        let blocks = (cfg.num_blocks, cfg.block_size);
        let kv = DeviceKv::new(kv_dtype, m, blocks, &device).map_err(candle)?;
        let pool = LoraPool::new(
            m.layers,
            proj_dims(m),
            slots.capacity(),
            cfg.max_lora_rank,
            weights.dtype,
            &device,
        )
        .map_err(candle)?;
        Ok(DeviceExecutor {
            model: DeviceModel::new(m.clone(), weights, &device).map_err(candle)?,
            kv,
            pool: SlotPool::new(pool),
            slots,
            device,
            step: 0,
        })
    }

    /// Bytes of the KV cache as allocated.
    pub fn kv_bytes(&self) -> usize {
        self.kv.bytes()
    }

    /// Bytes of the weights as placed.
    pub fn weight_bytes(&self) -> usize {
        self.model.weights.bytes
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
                self.pool.sync(*slot, &self.slots, self.step, completed)?;
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
        let (rank, bs) = (self.pool.max_rank, self.kv.block_size);
        let index = StepIndex::upload(plan, &lora, rank, bs, &self.device).map_err(candle)?;
        let inputs = StepInputs {
            index: &index,
            kv: &self.kv,
            pool: (!lora.is_empty()).then_some(&self.pool),
        };
        let logits = self.model.forward(&inputs).map_err(candle)?;
        self.pool.end_step(self.step)?;
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
            "device executor on {:?}; weights {:.0} MiB ({:?}); KV cache {:?}, {} blocks of {} ({:.0} MiB); adapter pool {} slots, rank <= {} ({:.0} MiB)",
            self.device.location(),
            mib(self.model.weights.bytes),
            self.model.weights.dtype,
            self.kv.dtype,
            self.kv.num_blocks,
            self.kv.block_size,
            mib(self.kv.bytes()),
            self.pool.pool.slots,
            self.pool.max_rank,
            mib(self.pool.bytes()),
        )
    }

    fn max_lora_rank(&self) -> Option<usize> {
        Some(self.pool.max_rank)
    }
}
