//! The pager's bookkeeping under its one lock (`State`): what is on each tier, the page-in queue,
//! the leases waiting, the failures and the admin pins. What always holds:
//! - an adapter with a pin (a ready lease's, or the admin's: `held`) is never evicted from any tier;
//! - at most `device_slots - 1` adapters are held by the admin, so a page-in always has a slot it
//!   can drain (`can_hold`);
//! - `host_bytes` is the sum of the host entries' sizes;
//! - a device slot is either occupied by exactly one device entry or on the free list.

use super::{AdapterId, AdapterSlot, AdapterSpec, PagerConfig, PagerStats, SlotTable, Tier};
use crate::metrics::Metrics;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// The last failed page-in of an adapter: leases fail fast until `retry_at`.
pub(super) struct Failure {
    /// Names the adapter, never a server path.
    pub message: String,
    /// The integrity gate refused the adapter (not a transient failure).
    pub refused: bool,
    pub retry_at: Instant,
    pub streak: u32,
}

pub(super) struct DeviceEntry {
    /// The slot of the executor's adapter pool this adapter occupies (filled in `SlotTable`).
    pub slot: AdapterSlot,
    pub pins: usize,
    pub last_use: u64,
    /// Every slot was pinned when a page-in needed one: new leases wait instead of pinning.
    pub draining: bool,
    /// Unregistered while pinned: removed when the last pin goes.
    pub forgotten: bool,
    /// The adapter's name, for the residency series.
    pub name: Arc<str>,
}

pub(super) struct HostEntry {
    pub bytes: Arc<Vec<u8>>,
    pub last_use: u64,
}

#[derive(Default)]
pub(super) struct State {
    pub clock: u64,
    pub device: HashMap<AdapterId, DeviceEntry>,
    pub host: HashMap<AdapterId, HostEntry>,
    pub host_bytes: usize,
    pub queue: VecDeque<Arc<AdapterSpec>>,
    pub queued: HashSet<AdapterId>,
    /// Leases not yet pinned, per adapter: their adapters are not evicted for other page-ins.
    pub wanted: HashMap<AdapterId, usize>,
    /// Pinned by the admin (`AdapterPager::pin`): kept on device (once paged in) until unpinned.
    pub held: HashSet<AdapterId>,
    pub failed: HashMap<AdapterId, Failure>,
    /// What the gate checked at the last successful page-in: a registered hash (true) or nothing
    /// to check against (false: not registered).
    pub checked: HashMap<AdapterId, bool>,
    /// Slots of the pool no device entry occupies.
    pub free_slots: Vec<AdapterSlot>,
    pub stats: PagerStats,
    /// The device tier or the page-in queue changed since the residency series was exported.
    pub device_changed: bool,
    pub stop: bool,
}

impl State {
    pub fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    pub fn tier(&self, id: AdapterId) -> Tier {
        if self.device.contains_key(&id) {
            Tier::Device
        } else if self.host.contains_key(&id) {
            Tier::Host
        } else {
            Tier::Disk
        }
    }

    /// Pinned by a ready lease or by the admin.
    pub fn is_pinned(&self, id: &AdapterId) -> bool {
        self.held.contains(id) || self.device.get(id).is_some_and(|e| e.pins > 0)
    }

    /// One more admin pin still leaves a device slot that page-ins can drain.
    pub fn can_hold(&self, id: AdapterId, device_slots: usize) -> bool {
        self.held.contains(&id) || self.held.len() + 1 < device_slots
    }

    pub fn enqueue(&mut self, spec: &Arc<AdapterSpec>) -> bool {
        let fresh = self.queued.insert(spec.id);
        if fresh {
            self.queue.push_back(spec.clone());
            self.device_changed = true;
        }
        fresh
    }

    /// Evicts the least recently used device entry that is unpinned and not awaited by a lease
    /// (a draining one counts as not awaited); false if there is none.
    pub fn evict_device(&mut self, m: &Metrics, slots: &SlotTable) -> bool {
        let (wanted, held) = (&self.wanted, &self.held);
        let victim = self
            .device
            .iter()
            .filter(|(id, e)| e.pins == 0 && !held.contains(id))
            .filter(|(id, e)| e.draining || !wanted.contains_key(id))
            .min_by_key(|(_, e)| e.last_use)
            .map(|(id, _)| *id);
        let Some(id) = victim else { return false };
        let e = self.device.remove(&id).expect("victim exists");
        assert_eq!(e.pins, 0, "a pinned adapter must never be evicted");
        self.release_slot(e.slot, slots);
        self.device_changed = true;
        self.stats.device_evictions += 1;
        m.adapter_evictions.with_label_values(&["device"]).inc();
        true
    }

    /// Keeps `bytes` in host memory, evicting unpinned LRU files; skipped if they cannot fit.
    pub fn insert_host(
        &mut self,
        id: AdapterId,
        bytes: Arc<Vec<u8>>,
        cfg: &PagerConfig,
        m: &Metrics,
    ) {
        let need = bytes.len();
        while self.host_bytes + need > cfg.host_bytes || self.host.len() >= cfg.host_slots {
            let victim = self
                .host
                .iter()
                .filter(|(id, _)| !self.is_pinned(id))
                .min_by_key(|(_, e)| e.last_use)
                .map(|(id, _)| *id);
            let Some(v) = victim else { return };
            let e = self.host.remove(&v).expect("victim exists");
            self.host_bytes -= e.bytes.len();
            self.stats.host_evictions += 1;
            m.adapter_evictions.with_label_values(&["host"]).inc();
        }
        let last_use = self.tick();
        self.host_bytes += need;
        if let Some(old) = self.host.insert(id, HostEntry { bytes, last_use }) {
            self.host_bytes -= old.bytes.len();
        }
    }

    pub fn want(&mut self, id: AdapterId, delta: isize) {
        let w = self.wanted.entry(id).or_default();
        *w = w.checked_add_signed(delta).expect("wanted count");
        if *w == 0 {
            self.wanted.remove(&id);
        }
    }

    pub fn unpin(&mut self, id: AdapterId, slots: &SlotTable) {
        let Some(e) = self.device.get_mut(&id) else {
            return;
        };
        e.pins -= 1;
        if e.pins == 0 && e.forgotten {
            let slot = e.slot;
            self.device.remove(&id);
            self.release_slot(slot, slots);
        }
    }

    /// Returns a slot to the free list once its occupant has left the device tier.
    pub fn release_slot(&mut self, slot: AdapterSlot, slots: &SlotTable) {
        slots.clear(slot);
        self.free_slots.push(slot);
        self.device_changed = true;
    }

    pub fn publish(&mut self, m: &Metrics) {
        self.stats.device_resident = self.device.len();
        self.stats.host_resident = self.host.len();
        self.stats.host_bytes = self.host_bytes;
        let held = &self.held;
        self.stats.pinned = self
            .device
            .iter()
            .filter(|(id, e)| e.pins > 0 || held.contains(id))
            .count();
        self.stats.held = self.held.len();
        m.adapters_resident
            .with_label_values(&["device"])
            .set(self.device.len() as i64);
        m.adapters_resident
            .with_label_values(&["host"])
            .set(self.host.len() as i64);
        m.adapters_pinned.set(self.stats.pinned as i64);
        if std::mem::take(&mut self.device_changed) {
            let slots = self.device.len() + self.free_slots.len();
            let names = self.device.values().filter(|e| !e.forgotten);
            let queued = self.queue.iter().map(|s| s.name.as_str());
            super::residency::export(m, slots, names.map(|e| &*e.name), queued);
        }
    }
}
