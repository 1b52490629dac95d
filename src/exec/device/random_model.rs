//! A device executor over random weights generated on the device itself (no file, no host copy):
//! for `openlora bench-device`, which times the forward pass of a Llama-3-8B-shaped model on a GPU
//! where no such checkpoint can be carried. Every matrix is drawn N(0, 0.02) on the device (candle's
//! curand on CUDA, its CPU rng on the twin) and cast to the compute dtype; norms are ones. Timings
//! over these weights equal timings over trained ones (the same shapes, dtypes and kernels); the
//! tokens they produce mean nothing.

use super::weights::{DeviceLayer, DeviceLinear, DeviceWeights, LinearWeight};
use super::{candle, DeviceExecutor};
use crate::error::Result;
use crate::exec::{ExecConfig, KvDtype};
use crate::lora::{AdapterSlot, SlotTable};
use crate::model::{ModelConfig, Proj};
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

/// One `[rows, cols]` matrix drawn on `dev` in f32, then cast (curand draws no 16-bit types).
fn normal(rows: usize, cols: usize, dev: &Device, dtype: DType) -> candle_core::Result<Tensor> {
    Tensor::randn(0f32, 0.02, (rows, cols), dev)?.to_dtype(dtype)
}

/// `m`'s weights drawn on `dev` in `dtype`; `seed` seeds the device generator on CUDA (candle's
/// CPU generator cannot be seeded: the twin's draws differ run to run, which no timing notices).
pub fn random_weights(
    m: &ModelConfig,
    dev: &Device,
    dtype: DType,
    seed: u64,
) -> candle_core::Result<DeviceWeights> {
    if !dev.is_cpu() {
        dev.set_seed(seed)?;
    }
    let ones = Tensor::ones(m.hidden, dtype, dev)?;
    let layers = (0..m.layers)
        .map(|_| {
            let proj = Proj::ALL
                .iter()
                .map(|&p| {
                    let (out, inp) = m.proj_shape(p);
                    Ok(DeviceLinear {
                        w: LinearWeight::Dense(normal(out, inp, dev, dtype)?),
                        bias: None,
                    })
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok(DeviceLayer {
                attn_norm: ones.clone(),
                mlp_norm: ones.clone(),
                proj,
            })
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let lm_head = match m.tie_embeddings {
        true => None,
        false => Some(normal(m.vocab_size, m.hidden, dev, dtype)?),
    };
    let mut w = DeviceWeights {
        embed: normal(m.vocab_size, m.hidden, dev, dtype)?,
        layers,
        final_norm: ones,
        lm_head,
        dtype,
        bytes: 0,
    };
    w.bytes = w.count_bytes();
    Ok(w)
}

impl DeviceExecutor {
    /// The executor for `m` with random weights made on `device` in `dtype` (see the module doc);
    /// the KV cache and the adapter pool as `cfg` and `slots` size them, as `new` does.
    pub fn random(
        m: &ModelConfig,
        cfg: &ExecConfig,
        slots: Arc<SlotTable>,
        device: Device,
        dtype: DType,
        seed: u64,
    ) -> Result<Self> {
        let weights = random_weights(m, &device, dtype, seed).map_err(candle)?;
        let kv_dtype = match (cfg.kv_dtype, dtype) {
            (KvDtype::Auto, DType::F32) => KvDtype::F32,
            (KvDtype::Auto, _) => KvDtype::BF16,
            (d, _) => d,
        };
        DeviceExecutor::assemble(m, weights, kv_dtype, cfg, slots, device)
    }

    /// Copies the table's occupant of `slot` into the device pool now, if it changed (the cold
    /// page-in a step would otherwise do first), and waits for the copy: what a page-in costs.
    pub fn page_in(&mut self, slot: AdapterSlot) -> Result<()> {
        let done = self.step;
        self.pool.sync(slot, &self.slots, done, done)?;
        self.synchronize()
    }

    /// Waits until all work queued on the device has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.device.synchronize().map_err(candle)
    }

    /// The candle device the executor runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }
}
