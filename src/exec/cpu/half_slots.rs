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
