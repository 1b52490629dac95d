//! The CPU executor's compact copies (bf16 or int8) of the adapters in the slot table, read by the
//! quantized path instead of the f32 weights (a half or a quarter of the bytes per token). A
//! slot's copy is made when the slot's generation changes — the pager filled it with another
//! adapter — never per step: it is this executor's "upload". The f32 adapter (the pager's host
//! copy) is never modified.

use crate::lora::{AdapterSlot, LoraAdapter, SlotTable};
use crate::ops::cpu::{HalfLora, HalfTerm, Int8Lora, Int8Term, LoraPair};
use std::sync::Arc;

/// A compact storage of one projection's LoRA pair, made from the f32 pair.
pub trait PackedPair: Send + Sync + Sized + 'static {
    /// The pair with a segment's coefficient, as the SGMV kernels take it.
    type Term<'a>: LoraPair + Copy;
    /// `--lora-dtype`'s name of this storage.
    const NAME: &'static str;
    /// From `a: [rank, in]`, `b: [out, rank]`.
    fn pack(a: &[f32], b: &[f32], rank: usize) -> Self;
    fn term(&self, coeff: f32) -> Self::Term<'_>;
}

impl PackedPair for HalfLora {
    type Term<'a> = HalfTerm<'a>;
    const NAME: &'static str = "bf16";
    fn pack(a: &[f32], b: &[f32], rank: usize) -> Self {
        HalfLora::from_f32(a, b, rank)
    }
    fn term(&self, coeff: f32) -> HalfTerm<'_> {
        HalfTerm { lora: self, coeff }
    }
}

impl PackedPair for Int8Lora {
    type Term<'a> = Int8Term<'a>;
    const NAME: &'static str = "int8";
    fn pack(a: &[f32], b: &[f32], rank: usize) -> Self {
        Int8Lora::from_f32(a, b, rank)
    }
    fn term(&self, coeff: f32) -> Int8Term<'_> {
        Int8Term { lora: self, coeff }
    }
}

/// One adapter's pairs in storage `P`: `layers[l][proj] = (pair, scale)`.
pub struct PackedAdapter<P> {
    pub layers: Vec<[Option<(P, f32)>; 7]>,
}

impl<P: PackedPair> PackedAdapter<P> {
    pub fn from_adapter(a: &LoraAdapter) -> Self {
        let layers = a
            .layers
            .iter()
            .map(|row| {
                row.clone()
                    .map(|w| w.map(|w| (P::pack(&w.a, &w.b, w.rank), w.scale)))
            })
            .collect();
        PackedAdapter { layers }
    }
}

/// Per slot: the generation the copy was made from, and the copy.
pub struct PackedSlots<P> {
    slots: Vec<Option<(u64, Arc<PackedAdapter<P>>)>>,
    /// Copies made so far (each a page-in seen by this executor).
    pub conversions: u64,
}

impl<P> Default for PackedSlots<P> {
    fn default() -> Self {
        PackedSlots {
            slots: Vec::new(),
            conversions: 0,
        }
    }
}

impl<P: PackedPair> PackedSlots<P> {
    /// The copy of `slot`'s occupant, made now if the occupant changed; `None` if empty.
    pub fn resolve(
        &mut self,
        table: &SlotTable,
        slot: AdapterSlot,
    ) -> Option<Arc<PackedAdapter<P>>> {
        let entry = table.get(slot)?;
        let i = slot.0 as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        match &self.slots[i] {
            Some((g, h)) if *g == entry.generation => Some(h.clone()),
            _ => {
                let h = Arc::new(PackedAdapter::from_adapter(&entry.adapter));
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
        let mut half = PackedSlots::<HalfLora>::default();
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
