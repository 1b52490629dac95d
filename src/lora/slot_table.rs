//! The adapter slot table: which adapter occupies each device slot. The pager is its only writer
//! (it fills a slot after a page-in and clears it on eviction, never while a lease pins it); an
//! executor only reads it, resolving the slot ids of a `StepPlan`'s LoRA segments. Each fill bumps
//! the slot's generation, so an executor that keeps its own copy of a slot (device memory) can tell
//! that the occupant changed and must be uploaded again.

use super::LoraAdapter;
use std::sync::{Arc, RwLock};

/// Index of a slot in the adapter pool; what a `StepPlan` names instead of an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdapterSlot(pub u32);

/// The occupant of one slot and how many times the slot has been filled.
#[derive(Debug, Clone)]
pub struct SlotEntry {
    pub generation: u64,
    pub adapter: Arc<LoraAdapter>,
}

#[derive(Debug)]
pub struct SlotTable {
    slots: RwLock<Vec<Option<SlotEntry>>>,
    fills: std::sync::atomic::AtomicU64,
}

impl SlotTable {
    pub fn new(capacity: usize) -> Self {
        SlotTable {
            slots: RwLock::new(vec![None; capacity]),
            fills: Default::default(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.read().expect("slot table").len()
    }

    /// Puts `adapter` into `slot` (the pager only: the slot must be free).
    pub fn fill(&self, slot: AdapterSlot, adapter: Arc<LoraAdapter>) {
        let generation = self
            .fills
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let mut s = self.slots.write().expect("slot table");
        debug_assert!(s[slot.0 as usize].is_none(), "slot {slot:?} filled twice");
        s[slot.0 as usize] = Some(SlotEntry {
            generation,
            adapter,
        });
    }

    /// Empties `slot` (the pager only, when no lease pins its occupant).
    pub fn clear(&self, slot: AdapterSlot) {
        self.slots.write().expect("slot table")[slot.0 as usize] = None;
    }

    /// The occupant of `slot`, if any.
    pub fn get(&self, slot: AdapterSlot) -> Option<SlotEntry> {
        self.slots
            .read()
            .expect("slot table")
            .get(slot.0 as usize)
            .cloned()
            .flatten()
    }

    /// The occupants of `slots` under one read lock; `None` for an empty or unknown slot.
    pub fn get_many(&self, slots: &[AdapterSlot]) -> Vec<Option<Arc<LoraAdapter>>> {
        let s = self.slots.read().expect("slot table");
        slots
            .iter()
            .map(|x| s.get(x.0 as usize).cloned().flatten().map(|e| e.adapter))
            .collect()
    }
}
