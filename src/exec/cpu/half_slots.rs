//! The CPU executor's bf16 copies of the adapters in the slot table, read by the quantized path
//! instead of the f32 weights (half the bytes per token). A slot's copy is made when the slot's
//! generation changes — the pager filled it with another adapter — never per step: it is this
//! executor's "upload". The f32 adapter (the pager's host copy) is never modified.

use crate::lora::{AdapterSlot, LoraAdapter, SlotTable};
use crate::ops::cpu::HalfLora;
use std::sync::Arc;

/// One adapter's pairs in bf16: `layers[l][proj] = (pair, scale)`.
pub struct HalfAdapter {
    pub layers: Vec<[Option<(HalfLora, f32)>; 7]>,
}

impl HalfAdapter {
    pub fn from_adapter(a: &LoraAdapter) -> Self {
        let layers = a
            .layers
            .iter()
            .map(|row| {
                row.clone()
                    .map(|w| w.map(|w| (HalfLora::from_f32(&w.a, &w.b, w.rank), w.scale)))
            })
            .collect();
        HalfAdapter { layers }
    }
}

/// Per slot: the generation the copy was made from, and the copy.
#[derive(Default)]
pub struct HalfSlots {
    slots: Vec<Option<(u64, Arc<HalfAdapter>)>>,
    /// Copies made so far (each a page-in seen by this executor).
    pub conversions: u64,
}

impl HalfSlots {
    /// The bf16 copy of `slot`'s occupant, made now if the occupant changed; `None` if empty.
    pub fn resolve(&mut self, table: &SlotTable, slot: AdapterSlot) -> Option<Arc<HalfAdapter>> {
        let entry = table.get(slot)?;
        let i = slot.0 as usize;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        match &self.slots[i] {
            Some((g, h)) if *g == entry.generation => Some(h.clone()),
            _ => {
                let h = Arc::new(HalfAdapter::from_adapter(&entry.adapter));
                self.conversions += 1;
                self.slots[i] = Some((entry.generation, h.clone()));
                Some(h)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::random_adapter;
    use crate::model::ModelConfig;

    fn tiny() -> ModelConfig {
        ModelConfig::from_hf(&serde_json::json!({
            "model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        }))
        .unwrap()
    }

    /// A copy is made once per fill of a slot, not per step, and follows the slot's occupant.
    #[test]
    fn copies_once_per_fill_and_follow_the_occupant() {
        let cfg = tiny();
        let (a, b) = (
            Arc::new(random_adapter("a", &cfg, 4, 1)),
            Arc::new(random_adapter("b", &cfg, 4, 2)),
        );
        let table = SlotTable::new(2);
        let mut half = HalfSlots::default();
        assert!(half.resolve(&table, AdapterSlot(0)).is_none());
        table.fill(AdapterSlot(0), a.clone());
        let first = half.resolve(&table, AdapterSlot(0)).unwrap();
        for _ in 0..5 {
            assert!(Arc::ptr_eq(
                &first,
                &half.resolve(&table, AdapterSlot(0)).unwrap()
            ));
        }
        assert_eq!(half.conversions, 1);
        table.clear(AdapterSlot(0));
        table.fill(AdapterSlot(0), b.clone());
        let second = half.resolve(&table, AdapterSlot(0)).unwrap();
        assert_eq!(half.conversions, 2);
        // The copy is b's, not a's: compare one rounded weight with b's f32 value.
        let (lora, scale) = second.layers[0].iter().flatten().next().unwrap();
        let w = b.layers[0].iter().flatten().next().unwrap();
        assert_eq!(*scale, w.scale);
        assert_eq!(lora.a[0], half::bf16::from_f32(w.a[0]).to_bits());
    }
}
