//! The backend seam. The engine turns scheduled sequences into a `StepPlan` of plain integers
//! (tokens, positions, KV slots, block tables, LoRA segments as adapter slot ids, logit rows); an
//! `Executor` owns what lives on a device (weights, KV storage, the adapter slot pool) and runs the
//! plan. Nothing above this module names a CPU or CUDA type: `create` picks the executor.
//! `cpu` is the CPU executor: the exact f32 reference path and the quantized fast path; `device`
//! is the device executor over candle tensors (CUDA, or candle's CPU device as its twin).

pub mod cpu;
pub mod device;
mod device_kind;
mod executor;
mod lora_dtype;
mod step_plan;

pub use device_kind::DeviceKind;
pub use executor::{ExecConfig, Executor, KvDtype};
pub use lora_dtype::LoraDtype;
pub use step_plan::{LoraSegment, SeqSlice, StepPlan};

use crate::error::Result;
use crate::lora::SlotTable;
use crate::model::Model;
use std::sync::Arc;

/// `kind` made concrete: `Auto` is CUDA device 0 when the build has CUDA and it answers, else
/// the CPU executor (one log line says which and why); other kinds are returned as they are.
pub fn resolve_device(kind: DeviceKind) -> DeviceKind {
    if kind != DeviceKind::Auto {
        return kind;
    }
    match device::open_device(Some(0)) {
        Ok(_) => {
            tracing::info!(
                "--device auto: CUDA device 0 answered; using the device executor on it"
            );
            DeviceKind::Cuda(0)
        }
        Err(why) => {
            tracing::info!("--device auto: using the CPU executor ({why})");
            DeviceKind::Cpu
        }
    }
}

/// The executor `cfg.device` names for `model`, reading adapters from `slots`. `Auto` takes CUDA
/// device 0 when the build has CUDA and it answers, else the CPU executor, and logs which and why.
pub fn create(
    model: &Arc<Model>,
    cfg: &ExecConfig,
    slots: Arc<SlotTable>,
) -> Result<Box<dyn Executor>> {
    let cuda = |n| device::open_device(Some(n));
    Ok(match cfg.device {
        DeviceKind::Cpu => Box::new(cpu::CpuExecutor::new(model, cfg, slots)?),
        DeviceKind::CandleCpu => {
            let dev = device::open_device(None)?;
            Box::new(device::DeviceExecutor::new(model, cfg, slots, dev)?)
        }
        DeviceKind::Cuda(n) => Box::new(device::DeviceExecutor::new(model, cfg, slots, cuda(n)?)?),
        DeviceKind::Auto => {
            let dev = cuda(0);
            match dev.and_then(|d| device::DeviceExecutor::new(model, cfg, slots.clone(), d)) {
                Ok(ex) => {
                    tracing::info!(
                        "--device auto: CUDA device 0 answered; using the device executor on it"
                    );
                    Box::new(ex)
                }
                Err(why) => {
                    tracing::info!("--device auto: using the CPU executor ({why})");
                    Box::new(cpu::CpuExecutor::new(model, cfg, slots)?)
                }
            }
        }
    })
}
