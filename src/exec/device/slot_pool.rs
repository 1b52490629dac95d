//! The adapter slot pool on the device: slot `i` holds a device copy of the pager's `SlotTable`
//! slot `i` in the contiguous per-projection tensors of `ops::device::LoraPool`, each projection's
//! pair at its own rank (at most `max_rank`). A slot is copied in only when the table's generation
//! for it changed (a new occupant) — never per step — and only after the last step that read its
//! previous occupant has completed: every step that reads a slot records its step number, and
//! `sync` refuses to overwrite a slot read by a step not yet completed (steps complete before the
//! next begins: `step` returns only after its logits are on the host, which on CUDA waits for
//! the stream).

use crate::error::{Error, Result};
use crate::lora::{AdapterSlot, LoraAdapter, SlotTable};
use crate::ops::device::LoraPool;

pub struct SlotPool {
    pub pool: LoraPool,
    generation: Vec<u64>,
    last_read: Vec<u64>,
    pub max_rank: usize,
    /// Adapters copied in so far (a slot's occupant changed).
    pub uploads: u64,
}

fn candle(e: candle_core::Error) -> Error {
    Error::Internal(format!("adapter upload: {e}"))
}

fn check_rank(ad: &LoraAdapter, max_rank: usize) -> Result<()> {
    match ad
        .layers
        .iter()
        .flatten()
        .flatten()
        .find(|w| w.rank > max_rank)
    {
        Some(w) => Err(Error::unsupported(
            format!("adapter {}", ad.name),
            format!("rank {} is above --max-lora-rank {max_rank}", w.rank),
        )),
        None => Ok(()),
    }
}

impl SlotPool {
    pub fn new(pool: LoraPool) -> Self {
        let capacity = pool.slots;
        SlotPool {
            max_rank: pool.max_rank,
            pool,
            generation: vec![0; capacity],
            last_read: vec![0; capacity],
            uploads: 0,
        }
    }

    /// Makes device slot `slot` hold `table`'s occupant for step `step` (steps `..=completed` have
    /// finished), copying it in if the occupant changed.
    pub fn sync(
        &mut self,
        slot: AdapterSlot,
        table: &SlotTable,
        step: u64,
        completed: u64,
    ) -> Result<()> {
        let i = slot.0 as usize;
        let entry = table
            .get(slot)
            .ok_or_else(|| Error::Internal(format!("adapter slot {} is empty", slot.0)))?;
        if i >= self.generation.len() {
            return Err(Error::Internal(format!(
                "adapter slot {i} outside a pool of {}",
                self.generation.len()
            )));
        }
        if self.generation[i] != entry.generation {
            if self.last_read[i] > completed {
                return Err(Error::Internal(format!(
                    "adapter slot {i} refilled while step {} reading it has not completed (completed: {completed})",
                    self.last_read[i]
                )));
            }
            check_rank(&entry.adapter, self.max_rank)?;
            self.pool.fill(i, &entry.adapter).map_err(candle)?;
            self.generation[i] = entry.generation;
            self.uploads += 1;
        }
        self.last_read[i] = step;
        Ok(())
    }

    /// Marks the end of step `step`'s enqueueing: the slots it read get their "read" fence (on CUDA
    /// an event on the compute stream that a later page-in into the slot waits for; on the twin
    /// `last_read`, already set by `sync`, is the fence).
    pub fn end_step(&mut self, step: u64) -> Result<()> {
        let read: Vec<usize> = (0..self.last_read.len())
            .filter(|&i| self.last_read[i] == step)
            .collect();
        self.pool.end_step(&read).map_err(candle)
    }

    pub fn bytes(&self) -> usize {
        self.pool.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::random_adapter;
    use crate::model::ModelConfig;
    use candle_core::{DType, Device};
    use std::sync::Arc;

    #[test]
    fn uploads_once_per_occupant_and_never_under_a_pending_step() {
        let cfg = ModelConfig::from_hf(&serde_json::json!({"model_type": "llama", "vocab_size": 32,
            "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}))
        .unwrap();
        let ad = |seed| Arc::new(random_adapter("r", &cfg, 4, seed));
        let table = SlotTable::new(2);
        let dims = [
            (16, 16),
            (16, 16),
            (16, 16),
            (16, 16),
            (16, 32),
            (16, 32),
            (32, 16),
        ];
        let lp = LoraPool::new(2, dims, 2, 64, DType::F32, &Device::Cpu).unwrap();
        let mut pool = SlotPool::new(lp);
        let s0 = AdapterSlot(0);
        table.fill(s0, ad(1));
        // Step 1 reads slot 0; steps 2 and 3 read it again: one upload.
        for step in 1..=3 {
            pool.sync(s0, &table, step, step - 1).unwrap();
        }
        assert_eq!(pool.uploads, 1);
        // A new occupant while step 3 is still running is refused; once it completed, uploaded.
        table.clear(s0);
        table.fill(s0, ad(2));
        let before = pool.pool.proj[0][0].a.to_vec1::<f32>().unwrap();
        assert!(pool.sync(s0, &table, 4, 2).is_err());
        assert_eq!(pool.uploads, 1);
        let after = pool.pool.proj[0][0].a.to_vec1::<f32>().unwrap();
        assert_eq!(before, after, "a refused refill must not touch the slot");
        assert!(
            before.iter().any(|&v| v != 0.0),
            "slot 0 holds its first occupant"
        );
        pool.sync(s0, &table, 4, 3).unwrap();
        assert_eq!(pool.uploads, 2);
        assert_ne!(pool.pool.proj[0][0].a.to_vec1::<f32>().unwrap(), before);
        // An empty slot is an error, not a silent base-model row.
        assert!(pool.sync(AdapterSlot(1), &table, 5, 4).is_err());
    }
}
