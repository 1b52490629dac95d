//! The CPU executor: the model's host weights (dense f32 for the exact reference path, or kept
//! quantized: int8 dot products in `ops::cpu::quant`), a KV store in f32/f16/bf16, and the adapter
//! slot pool read straight from the pager's `SlotTable` (host memory is this device's memory, so
//! "uploading" an adapter is the pager filling a slot). Every kernel it runs is batch-invariant.

mod forward;
mod kv_store;

pub use forward::CpuModel;
pub use kv_store::KvStore;

use super::{ExecConfig, Executor, StepPlan};
use crate::error::{Error, Result};
use crate::lora::SlotTable;
use crate::model::Model;
use std::sync::Arc;

pub struct CpuExecutor {
    model: CpuModel,
    kv: KvStore,
    slots: Arc<SlotTable>,
}

impl CpuExecutor {
    pub fn new(model: &Arc<Model>, cfg: &ExecConfig, slots: Arc<SlotTable>) -> Result<Self> {
        let m = model.config();
        let kv_dtype = cfg.kv_dtype.resolve(model.load_options.dtype);
        let kv = KvStore::new(
            kv_dtype,
            m.layers,
            cfg.num_blocks,
            cfg.block_size,
            m.kv_heads,
            m.head_dim,
        );
        Ok(CpuExecutor {
            model: CpuModel::new(m.clone(), model.weights.clone()),
            kv,
            slots,
        })
    }
}

impl Executor for CpuExecutor {
    fn step(&mut self, plan: &StepPlan) -> Result<Vec<f32>> {
        for c in &plan.block_copies {
            self.kv.copy_block(c.src as usize, c.dst as usize);
        }
        let mut lora = Vec::with_capacity(plan.lora.len());
        for seg in &plan.lora {
            let slots: Vec<_> = seg.terms.iter().map(|(s, _)| *s).collect();
            let mix = self
                .slots
                .get_many(&slots)
                .into_iter()
                .zip(&seg.terms)
                .map(|(a, (slot, w))| {
                    a.map(|a| (a, *w))
                        .ok_or_else(|| Error::Internal(format!("adapter slot {} is empty", slot.0)))
                })
                .collect::<Result<Vec<_>>>()?;
            lora.push((seg.rows.clone(), mix));
        }
        // The forward pass runs on a pool worker: its ~10 parallel regions per layer then fork
        // from inside the pool (work stealing) instead of each being injected from outside and
        // waited for on a lock, which cost more than the work at decode batch sizes.
        let (model, kv) = (&self.model, &mut self.kv);
        Ok(rayon::scope(|_| model.forward(plan, &lora, kv)))
    }

    fn describe(&self) -> String {
        format!(
            "cpu executor, {} threads; weights {:.0} MiB ({}); KV cache {:?}, {} blocks of {}",
            rayon::current_num_threads(),
            self.model.weights.bytes() as f64 / (1 << 20) as f64,
            self.model.weights.describe(),
            self.kv.dtype(),
            self.kv.num_blocks,
            self.kv.block_size,
        )
    }
}
