//! The backend seam. The engine turns scheduled sequences into a `StepPlan` of plain integers
//! (tokens, positions, KV slots, block tables, LoRA segments as adapter slot ids, logit rows); an
//! `Executor` owns what lives on a device (weights, KV storage, the adapter slot pool) and runs the
//! plan. Nothing above this module names a CPU or CUDA type: `create` picks the executor.
//! `cpu` is the CPU executor: the exact f32 reference path and the quantized fast path.

pub mod cpu;
mod executor;
mod step_plan;

pub use executor::{ExecConfig, Executor, KvDtype};
pub use step_plan::{LoraSegment, SeqSlice, StepPlan};

use crate::error::Result;
use crate::lora::SlotTable;
use crate::model::Model;
use std::sync::Arc;

/// The executor for `model` (today: the CPU one), reading adapters from `slots`.
pub fn create(
    model: &Arc<Model>,
    cfg: &ExecConfig,
    slots: Arc<SlotTable>,
) -> Result<Box<dyn Executor>> {
    Ok(Box::new(cpu::CpuExecutor::new(model, cfg, slots)?))
}
