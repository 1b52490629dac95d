//! The adapter pager: registered adapters move disk -> host (the safetensors bytes, byte and slot
//! budget, LRU) -> device (the compute-ready layout, slot budget, LRU) on one background thread
//! (`pager_worker`), in the order they were asked for; the bookkeeping is `pager_state`, a
//! request's claim is a `Lease`. What always holds:
//! - a request holds a `Lease`; once every adapter of the lease is on device the lease pins them,
//!   and the pins are released when the lease is dropped (the sequence finished or was aborted);
//! - a pinned adapter is never evicted from any tier, so the device tier never exceeds its slots
//!   and a scheduled sequence's weights cannot go away under it;
//! - the admin may pin an adapter (`pin`): it is paged in and stays on device until `unpin` (or
//!   until it is unregistered); at most `device_slots - 1` adapters are held this way, so one
//!   slot always stays for everything else;
//! - page-ins never run on the engine thread: a lease that is not ready is simply polled again;
//! - progress: when every device slot is pinned, the least recently used lease-pinned adapter is
//!   marked draining (new leases for it wait behind the queued page-in), so its pins run out and
//!   the oldest page-in gets a slot. No page-in waits forever under any popularity distribution;
//! - a failed page-in is never final: the leases waiting on it fail (503), and the first lease
//!   after a backoff (doubling from `RETRY_BACKOFF` to `MAX_RETRY_BACKOFF`) tries again; a read
//!   error is retried at once a few times before it counts as a failure;
//! - with an integrity gate (`set_gate`), the bytes of every page-in are checked against it
//!   before they are installed; a refused adapter's leases fail with `Error::AdapterRefused`.

pub use super::lease::Lease;
pub use super::pager_config::PagerConfig;
use super::pager_state::State;
pub use super::tier::{PagerStats, Tier};
use super::{AdapterGate, AdapterId, AdapterSlot, AdapterSpec, Integrity, SlotTable};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::ModelConfig;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What the pager, its leases and its page-in thread share.
pub(super) struct Shared {
    pub model: ModelConfig,
    pub slots: Arc<SlotTable>,
    pub cfg: PagerConfig,
    pub metrics: Arc<Metrics>,
    pub state: Mutex<State>,
    /// Work for the page-in thread: a queued page-in, or a pin released.
    pub wake_worker: Condvar,
    /// A page-in finished (or failed).
    pub loaded: Condvar,
    pub gate: Mutex<Option<Arc<dyn AdapterGate>>>,
}

/// The tiers and their page-in thread. Dropping the pager stops the thread.
pub struct AdapterPager {
    shared: Arc<Shared>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("pager lock")
    }
}

impl AdapterPager {
    pub fn new(model: ModelConfig, cfg: PagerConfig, metrics: Arc<Metrics>) -> Result<Self> {
        cfg.validate()?;
        let mut state = State {
            free_slots: (0..cfg.device_slots as u32)
                .rev()
                .map(AdapterSlot)
                .collect(),
            device_changed: true,
            ..State::default()
        };
        state.publish(&metrics);
        let shared = Arc::new(Shared {
            model,
            slots: Arc::new(SlotTable::new(cfg.device_slots)),
            cfg,
            metrics,
            state: Mutex::new(state),
            wake_worker: Condvar::new(),
            loaded: Condvar::new(),
            gate: Mutex::new(None),
        });
        let s = shared.clone();
        let worker = std::thread::Builder::new()
            .name("openlora-pager".into())
            .spawn(move || super::pager_worker::worker(&s))
            .map_err(|e| Error::Internal(format!("spawning the pager thread: {e}")))?;
        Ok(AdapterPager {
            shared,
            worker: Some(worker),
        })
    }

    pub fn config(&self) -> &PagerConfig {
        &self.shared.cfg
    }

    /// Checks the bytes of every later page-in against `gate`.
    pub fn set_gate(&self, gate: Arc<dyn AdapterGate>) {
        *self.shared.gate.lock().expect("pager gate") = Some(gate);
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The slot table an executor reads the leased slots' weights from.
    pub fn slots(&self) -> &Arc<SlotTable> {
        &self.shared.slots
    }

    /// Claims `specs` for one request and starts paging in whatever is not on device yet.
    pub fn lease(&self, specs: Vec<Arc<AdapterSpec>>) -> Lease {
        let m = &self.shared.metrics;
        let mut st = self.shared.lock();
        let (mut queued, mut missed) = (false, false);
        for s in &specs {
            st.want(s.id, 1);
            match st.tier(s.id) {
                Tier::Device => {
                    st.stats.hits += 1;
                    m.adapter_hits.with_label_values(&["device"]).inc();
                }
                tier => {
                    missed = true;
                    st.stats.misses += 1;
                    m.adapter_misses.with_label_values(&[tier.as_str()]).inc();
                    queued |= st.enqueue(s);
                }
            }
        }
        st.publish(m);
        drop(st);
        if queued {
            self.shared.wake_worker.notify_all();
        }
        Lease {
            shared: self.shared.clone(),
            specs,
            pinned: None,
            missed_at: missed.then(Instant::now),
        }
    }

    pub fn tier(&self, id: AdapterId) -> Tier {
        self.shared.lock().tier(id)
    }

    /// Pins currently held on `id` (0 when not on device).
    pub fn pins(&self, id: AdapterId) -> usize {
        self.shared.lock().device.get(&id).map_or(0, |e| e.pins)
    }

    /// Pins `spec` for the admin: pages it in (if it is not on device) and keeps it there until
    /// `unpin`. Refused (409) when it would leave no device slot for other adapters.
    pub fn pin(&self, spec: &Arc<AdapterSpec>) -> Result<()> {
        let mut st = self.shared.lock();
        if !st.can_hold(spec.id, self.shared.cfg.device_slots) {
            return Err(Error::conflict(
                "lora_name",
                format!(
                "cannot pin `{}`: {} of the {} device slots are pinned already and one must stay \
                 free for other adapters; unpin one first",
                spec.name,
                st.held.len(),
                self.shared.cfg.device_slots
            ),
            ));
        }
        st.held.insert(spec.id);
        st.failed.remove(&spec.id);
        let queued = st.tier(spec.id) != Tier::Device && st.enqueue(spec);
        st.publish(&self.shared.metrics);
        drop(st);
        if queued {
            self.shared.wake_worker.notify_all();
        }
        Ok(())
    }

    /// Releases the admin's pin on `id` (false if it had none); it is then evicted by LRU as usual.
    pub fn unpin(&self, id: AdapterId) -> bool {
        let mut st = self.shared.lock();
        let was = st.held.remove(&id);
        st.publish(&self.shared.metrics);
        drop(st);
        self.shared.wake_worker.notify_all();
        was
    }

    /// Whether the admin pinned `id`.
    pub fn is_held(&self, id: AdapterId) -> bool {
        self.shared.lock().held.contains(&id)
    }

    /// What the integrity gate has said about `id`'s weights (`Integrity`).
    pub fn integrity(&self, id: AdapterId) -> Integrity {
        let gated = self.shared.gate.lock().expect("pager gate").is_some();
        let st = self.shared.lock();
        let failure = st.failed.get(&id).map(|f| (f.refused, f.message.clone()));
        Integrity::of(gated, st.checked.get(&id).copied(), failure)
    }

    pub fn stats(&self) -> PagerStats {
        self.shared.lock().stats.clone()
    }

    /// Drops every copy of an unregistered adapter (pinned device copies when their pins go).
    pub fn forget(&self, id: AdapterId) {
        let mut st = self.shared.lock();
        if let Some(h) = st.host.remove(&id) {
            st.host_bytes -= h.bytes.len();
        }
        st.failed.remove(&id);
        st.checked.remove(&id);
        st.held.remove(&id);
        match st.device.get_mut(&id) {
            Some(e) if e.pins > 0 => {
                e.forgotten = true;
                st.device_changed = true;
            }
            Some(e) => {
                let slot = e.slot;
                st.device.remove(&id);
                st.release_slot(slot, &self.shared.slots);
            }
            None => {}
        }
        st.publish(&self.shared.metrics);
        drop(st);
        self.shared.wake_worker.notify_all();
    }

    /// Blocks until a page-in finishes or `timeout` passes (the engine has nothing else to do).
    pub fn wait_for_load(&self, timeout: Duration) {
        let st = self.shared.lock();
        if st.queue.is_empty() {
            return;
        }
        let _ = self.shared.loaded.wait_timeout(st, timeout);
    }
}

impl Drop for AdapterPager {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake_worker.notify_all();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
