//! The adapter slot pool on the device: slot `i` holds a device copy of the pager's `SlotTable`
//! slot `i`, each projection's pair at its own rank (at most `max_rank`). A slot is uploaded only
//! when the table's generation for it changed (a new occupant) — never per step — and only after
//! the last step that read its previous occupant has completed: every step that reads a slot
//! records its step number, and `sync` refuses to overwrite a slot read by a step not yet
//! completed (on the twin steps complete before the next begins; on CUDA the executor synchronizes
//! its stream first).

use crate::error::{Error, Result};
use crate::lora::{AdapterSlot, LoraAdapter, SlotTable};
use crate::ops::device::{LoraPair, SlotLora};
use candle_core::{DType, Device, Tensor};

pub struct SlotPool {
    pub lora: Vec<Option<SlotLora>>,
    generation: Vec<u64>,
    last_read: Vec<u64>,
    pub max_rank: usize,
    /// Adapters uploaded so far (a slot's occupant changed).
    pub uploads: u64,
}

fn candle(e: candle_core::Error) -> Error {
    Error::Internal(format!("adapter upload: {e}"))
}

fn upload(ad: &LoraAdapter, max_rank: usize, dev: &Device, dtype: DType) -> Result<SlotLora> {
    let mut layers = Vec::with_capacity(ad.layers.len());
    for layer in &ad.layers {
        let mut pairs: [Option<LoraPair>; 7] = Default::default();
        for (slot, lw) in pairs.iter_mut().zip(layer) {
            let Some(lw) = lw else { continue };
            if lw.rank > max_rank {
                return Err(Error::unsupported(
                    format!("adapter {}", ad.name),
                    format!("rank {} is above --max-lora-rank {max_rank}", lw.rank),
                ));
            }
            let (inp, out) = (lw.a.len() / lw.rank, lw.b.len() / lw.rank);
            let t = |v: &[f32], s: (usize, usize)| Tensor::from_slice(v, s, dev)?.to_dtype(dtype);
            *slot = Some(LoraPair {
                a: t(&lw.a, (lw.rank, inp)).map_err(candle)?,
                b: t(&lw.b, (out, lw.rank)).map_err(candle)?,
                rank: lw.rank,
                scale: lw.scale,
            });
        }
        layers.push(pairs);
    }
    Ok(layers)
}

impl SlotPool {
    pub fn new(capacity: usize, max_rank: usize) -> Self {
        SlotPool {
            lora: (0..capacity).map(|_| None).collect(),
            generation: vec![0; capacity],
            last_read: vec![0; capacity],
            max_rank,
            uploads: 0,
        }
    }

    /// Makes device slot `slot` hold `table`'s occupant for step `step` (steps `..=completed` have
    /// finished), uploading it if the occupant changed.
    pub fn sync(
        &mut self,
        slot: AdapterSlot,
        table: &SlotTable,
        step: u64,
        completed: u64,
        dev: &Device,
        dtype: DType,
    ) -> Result<()> {
        let i = slot.0 as usize;
        let entry = table
            .get(slot)
            .ok_or_else(|| Error::Internal(format!("adapter slot {} is empty", slot.0)))?;
        if i >= self.lora.len() {
            return Err(Error::Internal(format!(
                "adapter slot {i} outside a pool of {}",
                self.lora.len()
            )));
        }
        if self.generation[i] != entry.generation {
            if self.last_read[i] > completed {
                return Err(Error::Internal(format!(
                    "adapter slot {i} refilled while step {} reading it has not completed (completed: {completed})",
                    self.last_read[i]
                )));
            }
            self.lora[i] = Some(upload(&entry.adapter, self.max_rank, dev, dtype)?);
            self.generation[i] = entry.generation;
            self.uploads += 1;
        }
        self.last_read[i] = step;
        Ok(())
    }

    pub fn bytes(&self) -> usize {
        let n = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        self.lora
            .iter()
            .flatten()
            .flatten()
            .flatten()
            .flatten()
            .map(|p| n(&p.a) + n(&p.b))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::random_adapter;
    use crate::model::ModelConfig;
    use std::sync::Arc;

    #[test]
    fn uploads_once_per_occupant_and_never_under_a_pending_step() {
        let cfg = ModelConfig::from_hf(&serde_json::json!({"model_type": "llama", "vocab_size": 32,
            "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}))
        .unwrap();
        let ad = |seed| Arc::new(random_adapter("r", &cfg, 4, seed));
        let table = SlotTable::new(2);
        let mut pool = SlotPool::new(2, 64);
        let (dev, s0) = (Device::Cpu, AdapterSlot(0));
        table.fill(s0, ad(1));
        // Step 1 reads slot 0; steps 2 and 3 read it again: one upload.
        for step in 1..=3 {
            pool.sync(s0, &table, step, step - 1, &dev, DType::F32)
                .unwrap();
        }
        assert_eq!(pool.uploads, 1);
        // A new occupant while step 3 is still running is refused; once it completed, uploaded.
        table.clear(s0);
        table.fill(s0, ad(2));
        assert!(pool.sync(s0, &table, 4, 2, &dev, DType::F32).is_err());
        assert_eq!(pool.uploads, 1);
        pool.sync(s0, &table, 4, 3, &dev, DType::F32).unwrap();
        assert_eq!(pool.uploads, 2);
        // An empty slot is an error, not a silent base-model row.
        assert!(pool
            .sync(AdapterSlot(1), &table, 5, 4, &dev, DType::F32)
            .is_err());
    }
}
