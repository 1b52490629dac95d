//! The CPU executor: the model's host weights (dense f32 for the exact reference path, or kept
//! quantized: int8 dot products in `ops::cpu::quant`), a KV store in f32/f16/bf16, and the adapter
//! slot pool read straight from the pager's `SlotTable` (host memory is this device's memory, so
//! "uploading" an adapter is the pager filling a slot). Every kernel it runs is batch-invariant.

mod forward;
mod kv_store;
mod packed_slots;

pub use forward::CpuModel;
use forward::ResolvedLora;
pub use kv_store::KvStore;
use packed_slots::PackedSlots;

use super::{ExecConfig, Executor, LoraDtype, StepPlan};
use crate::error::{Error, Result};
use crate::lora::{AdapterSlot, SlotTable};
use crate::model::Model;
use crate::ops::cpu::{HalfLora, Int8Lora};
use packed_slots::PackedPair;
use std::sync::Arc;

pub struct CpuExecutor {
    model: CpuModel,
    kv: KvStore,
    slots: Arc<SlotTable>,
    /// Compact copies of the slots' adapters when `--lora-dtype` resolves to bf16 or int8 (by
    /// default next to block-quantized projections; the f32 reference path keeps f32 adapters).
    packed: Packed,
}

/// The slots' adapters as the executor reads them.
enum Packed {
    F32,
    Bf16(PackedSlots<HalfLora>),
    Int8(PackedSlots<Int8Lora>),
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
            packed: match cfg.lora_dtype.resolve(model.weights.has_quantized()) {
                LoraDtype::BF16 => Packed::Bf16(PackedSlots::default()),
                LoraDtype::Int8 => Packed::Int8(PackedSlots::default()),
                _ => Packed::F32,
            },
        })
    }
}

impl Executor for CpuExecutor {
    fn step(&mut self, plan: &StepPlan) -> Result<Vec<f32>> {
        for c in &plan.block_copies {
            self.kv.copy_block(c.src as usize, c.dst as usize);
        }
        let slots = &self.slots;
        let lora = match &mut self.packed {
            Packed::F32 => ResolvedLora::F32(resolve(plan, |s| slots.get(s).map(|e| e.adapter))?),
            Packed::Bf16(p) => ResolvedLora::Bf16(resolve(plan, |s| p.resolve(slots, s))?),
            Packed::Int8(p) => ResolvedLora::Int8(resolve(plan, |s| p.resolve(slots, s))?),
        };
        // The forward pass runs on a pool worker: its ~10 parallel regions per layer then fork
        // from inside the pool (work stealing) instead of each being injected from outside and
        // waited for on a lock, which cost more than the work at decode batch sizes.
        let (model, kv) = (&self.model, &mut self.kv);
        Ok(rayon::scope(|_| model.forward(plan, &lora, kv)))
    }

    fn describe(&self) -> String {
        format!(
            "cpu executor, {} threads; weights {:.0} MiB ({}); adapters {}; KV cache {:?}, {} blocks of {}",
            rayon::current_num_threads(),
            self.model.weights.bytes() as f64 / (1 << 20) as f64,
            self.model.weights.describe(),
            match self.packed {
                Packed::F32 => "f32",
                Packed::Bf16(_) => HalfLora::NAME,
                Packed::Int8(_) => Int8Lora::NAME,
            },
            self.kv.dtype(),
            self.kv.num_blocks,
            self.kv.block_size,
        )
    }
}

/// Resolves every LoRA segment's slots through `get` (an empty slot is an engine bug).
fn resolve<A>(
    plan: &StepPlan,
    mut get: impl FnMut(AdapterSlot) -> Option<Arc<A>>,
) -> Result<forward::Resolved<A>> {
    let mut out = Vec::with_capacity(plan.lora.len());
    for seg in &plan.lora {
        let mix = seg
            .terms
            .iter()
            .map(|&(slot, w)| {
                get(slot)
                    .map(|a| (a, w))
                    .ok_or_else(|| Error::Internal(format!("adapter slot {} is empty", slot.0)))
            })
            .collect::<Result<Vec<_>>>()?;
        out.push((seg.rows.clone(), mix));
    }
    Ok(out)
}
