//! The adapter pager: registered adapters move disk -> host (the safetensors bytes, byte and slot
//! budget, LRU) -> device (the compute-ready layout, slot budget, LRU) on one background thread, in
//! the order they were asked for. What always holds:
//! - a request holds a `Lease`; once every adapter of the lease is on device the lease pins them,
//!   and the pins are released when the lease is dropped (the sequence finished or was aborted);
//! - a pinned adapter is never evicted from any tier, so the device tier never exceeds its slots
//!   and a scheduled sequence's weights cannot go away under it;
//! - page-ins never run on the engine thread: a lease that is not ready is simply polled again;
//! - progress: when every device slot is pinned, the least recently used pinned adapter is marked
//!   draining (new leases for it wait behind the queued page-in), so its pins run out and the
//!   oldest page-in gets a slot. No page-in waits forever under any popularity distribution;
//! - a failed page-in is never final: the leases waiting on it fail (503), and the first lease
//!   after a backoff (doubling from `RETRY_BACKOFF` to `MAX_RETRY_BACKOFF`) tries again; a read
//!   error is retried at once a few times before it counts as a failure;
//! - with an integrity gate (`set_gate`), the bytes of every page-in are checked against it
//!   before they are installed; a refused adapter's leases fail with `Error::AdapterRefused`.

pub use super::pager_config::PagerConfig;
pub use super::tier::{PagerStats, Tier};
use super::{
    AdapterGate, AdapterId, AdapterSlot, AdapterSpec, GateStage, Integrity, LoraAdapter, SlotTable,
};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::ModelConfig;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a page-in waits on one draining adapter before draining another as well.
const DRAIN_PATIENCE: Duration = Duration::from_millis(50);

/// Wait before a failed adapter is tried again; doubles with each failure in a row.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(10);
/// Pauses between the immediate retries of a failed read.
const READ_RETRIES: [Duration; 2] = [Duration::from_millis(20), Duration::from_millis(100)];

/// The last failed page-in of an adapter: leases fail fast until `retry_at`.
struct Failure {
    /// Names the adapter, never a server path.
    message: String,
    /// The integrity gate refused the adapter (not a transient failure).
    refused: bool,
    retry_at: Instant,
    streak: u32,
}

struct DeviceEntry {
    /// The slot of the executor's adapter pool this adapter occupies (filled in `SlotTable`).
    slot: AdapterSlot,
    pins: usize,
    last_use: u64,
    /// Every slot was pinned when a page-in needed one: new leases wait instead of pinning.
    draining: bool,
    /// Unregistered while pinned: removed when the last pin goes.
    forgotten: bool,
    /// The adapter's name, for the residency series.
    name: Arc<str>,
}

struct HostEntry {
    bytes: Arc<Vec<u8>>,
    last_use: u64,
}

#[derive(Default)]
struct State {
    clock: u64,
    device: HashMap<AdapterId, DeviceEntry>,
    host: HashMap<AdapterId, HostEntry>,
    host_bytes: usize,
    queue: VecDeque<Arc<AdapterSpec>>,
    queued: HashSet<AdapterId>,
    /// Leases not yet pinned, per adapter: their adapters are not evicted for other page-ins.
    wanted: HashMap<AdapterId, usize>,
    failed: HashMap<AdapterId, Failure>,
    /// What the gate checked at the last successful page-in: a registered hash (true) or nothing
    /// to check against (false: not registered).
    checked: HashMap<AdapterId, bool>,
    /// Slots of the pool no device entry occupies.
    free_slots: Vec<AdapterSlot>,
    stats: PagerStats,
    /// The device tier or the page-in queue changed since the residency series was exported.
    device_changed: bool,
    stop: bool,
}

struct Shared {
    model: ModelConfig,
    slots: Arc<SlotTable>,
    cfg: PagerConfig,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    /// Work for the page-in thread: a queued page-in, or a pin released.
    wake_worker: Condvar,
    /// A page-in finished (or failed).
    loaded: Condvar,
    gate: Mutex<Option<Arc<dyn AdapterGate>>>,
}

/// The tiers and their page-in thread. Dropping the pager stops the thread.
pub struct AdapterPager {
    shared: Arc<Shared>,
    worker: Option<std::thread::JoinHandle<()>>,
}

/// A request's claim on its adapters: `poll` until ready; pins are held until drop.
pub struct Lease {
    shared: Arc<Shared>,
    specs: Vec<Arc<AdapterSpec>>,
    pinned: Option<Vec<AdapterSlot>>,
    /// When the lease was taken, if an adapter of it was not on device then.
    missed_at: Option<Instant>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("pager lock")
    }
}

impl State {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn tier(&self, id: AdapterId) -> Tier {
        if self.device.contains_key(&id) {
            Tier::Device
        } else if self.host.contains_key(&id) {
            Tier::Host
        } else {
            Tier::Disk
        }
    }

    fn is_pinned(&self, id: &AdapterId) -> bool {
        self.device.get(id).is_some_and(|e| e.pins > 0)
    }

    fn enqueue(&mut self, spec: &Arc<AdapterSpec>) -> bool {
        let fresh = self.queued.insert(spec.id);
        if fresh {
            self.queue.push_back(spec.clone());
            self.device_changed = true;
        }
        fresh
    }

    /// Evicts the least recently used device entry that is unpinned and not awaited by a lease
    /// (a draining one counts as not awaited); false if there is none.
    fn evict_device(&mut self, m: &Metrics, slots: &SlotTable) -> bool {
        let wanted = &self.wanted;
        let victim = self
            .device
            .iter()
            .filter(|(id, e)| e.pins == 0 && (e.draining || !wanted.contains_key(id)))
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
    fn insert_host(&mut self, id: AdapterId, bytes: Arc<Vec<u8>>, cfg: &PagerConfig, m: &Metrics) {
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

    fn want(&mut self, id: AdapterId, delta: isize) {
        let w = self.wanted.entry(id).or_default();
        *w = w.checked_add_signed(delta).expect("wanted count");
        if *w == 0 {
            self.wanted.remove(&id);
        }
    }

    fn unpin(&mut self, id: AdapterId, slots: &SlotTable) {
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
    fn release_slot(&mut self, slot: AdapterSlot, slots: &SlotTable) {
        slots.clear(slot);
        self.free_slots.push(slot);
        self.device_changed = true;
    }

    fn publish(&mut self, m: &Metrics) {
        self.stats.device_resident = self.device.len();
        self.stats.host_resident = self.host.len();
        self.stats.host_bytes = self.host_bytes;
        self.stats.pinned = self.device.values().filter(|e| e.pins > 0).count();
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
            .spawn(move || worker(&s))
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

impl Lease {
    /// The slots of the pinned adapters (in the order given) once all are on device; `None` while
    /// paging in. Fails if a page-in failed (the file changed or vanished since registration).
    pub fn poll(&mut self) -> Result<Option<&[AdapterSlot]>> {
        if self.pinned.is_none() {
            self.pinned = self.try_pin()?;
            let waited = match self.pinned {
                Some(_) => self.missed_at.take(),
                None => None,
            };
            if let Some(t) = waited {
                let secs = t.elapsed().as_secs_f64();
                self.shared.metrics.adapter_page_in_wait.observe(secs);
            }
        }
        Ok(self.pinned.as_deref())
    }

    pub fn is_ready(&self) -> bool {
        self.pinned.is_some()
    }

    fn try_pin(&self) -> Result<Option<Vec<AdapterSlot>>> {
        let mut st = self.shared.lock();
        let now = Instant::now();
        for s in &self.specs {
            if let Some(f) = st.failed.get(&s.id).filter(|f| f.retry_at > now) {
                if f.refused {
                    return Err(Error::AdapterRefused {
                        name: s.name.clone(),
                        reason: f.message.clone(),
                    });
                }
                return Err(Error::Unavailable(format!(
                    "adapter `{}` could not be paged in ({}); retry later",
                    s.name, f.message
                )));
            }
        }
        let ready = |st: &State, s: &AdapterSpec| st.device.get(&s.id).is_some_and(|e| !e.draining);
        if !self.specs.iter().all(|s| ready(&st, s)) {
            let mut queued = false;
            let missing: Vec<_> = self.specs.iter().filter(|s| !ready(&st, s)).collect();
            for s in missing {
                queued |= st.enqueue(s);
            }
            drop(st);
            if queued {
                self.shared.wake_worker.notify_all();
            }
            return Ok(None);
        }
        let now = st.tick();
        let pinned = self
            .specs
            .iter()
            .map(|s| {
                st.want(s.id, -1);
                let e = st.device.get_mut(&s.id).expect("checked resident");
                e.pins += 1;
                e.last_use = now;
                e.slot
            })
            .collect();
        st.publish(&self.shared.metrics);
        drop(st);
        self.shared.wake_worker.notify_all();
        Ok(Some(pinned))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let pinned = self.pinned.take().is_some();
        let mut st = self.shared.lock();
        for s in &self.specs {
            match pinned {
                true => st.unpin(s.id, &self.shared.slots),
                false => st.want(s.id, -1),
            }
        }
        st.publish(&self.shared.metrics);
        drop(st);
        self.shared.wake_worker.notify_all();
    }
}

/// The page-in thread: serves the queue in order until the pager is dropped.
fn worker(shared: &Shared) {
    loop {
        let spec = {
            let mut st = shared.lock();
            loop {
                if st.stop {
                    return;
                }
                if let Some(s) = st.queue.front() {
                    break s.clone();
                }
                st = shared.wake_worker.wait(st).expect("pager lock");
            }
        };
        let mut res = page_in(shared, &spec);
        for pause in READ_RETRIES {
            if !matches!(res, Err(Error::Io { .. })) {
                break;
            }
            std::thread::sleep(pause);
            res = page_in(shared, &spec);
        }
        let mut st = shared.lock();
        match res {
            Ok(()) => {
                st.failed.remove(&spec.id);
            }
            Err(e) => {
                tracing::warn!(adapter = %spec.name, error = %e, "page-in failed");
                let streak = st.failed.get(&spec.id).map_or(1, |f| f.streak + 1);
                let backoff = RETRY_BACKOFF
                    .saturating_mul(1 << (streak - 1).min(16))
                    .min(MAX_RETRY_BACKOFF);
                let refused = matches!(e, Error::AdapterRefused { .. });
                let failure = Failure {
                    message: match e.about_adapter(&spec.name) {
                        Error::InvalidAdapter { message, .. } => message,
                        Error::AdapterRefused { reason, .. } => reason,
                        other => other.to_string(),
                    },
                    refused,
                    retry_at: Instant::now() + backoff,
                    streak,
                };
                st.failed.insert(spec.id, failure);
                st.stats.failures += 1;
            }
        }
        st.queue.pop_front();
        st.queued.remove(&spec.id);
        st.device_changed = true;
        st.publish(&shared.metrics);
        drop(st);
        shared.loaded.notify_all();
    }
}

/// Brings one adapter to the device tier (through host memory), waiting for a free slot.
fn page_in(shared: &Shared, spec: &AdapterSpec) -> Result<()> {
    let m = &shared.metrics;
    let cached = {
        let mut st = shared.lock();
        if let Some(e) = st.device.get_mut(&spec.id) {
            e.draining = false; // still resident: a lease asked again while it was draining
            return Ok(());
        }
        let now = st.tick();
        st.host.get_mut(&spec.id).map(|h| {
            h.last_use = now;
            h.bytes.clone()
        })
    };
    let bytes = match (&spec.preloaded, cached) {
        (Some(adapter), _) => return install(shared, spec, adapter.clone()),
        (None, Some(b)) => b,
        (None, None) => {
            let start = Instant::now();
            let path = spec.weights_path();
            let b = Arc::new(super::regular_file::read(&path)?);
            m.adapter_load_seconds
                .with_label_values(&["host"])
                .observe(start.elapsed().as_secs_f64());
            m.adapter_loads.with_label_values(&["host"]).inc();
            let mut st = shared.lock();
            st.stats.disk_reads += 1;
            st.insert_host(spec.id, b.clone(), &shared.cfg, m);
            b
        }
    };
    let gate = shared.gate.lock().expect("pager gate").clone();
    if let Some(gate) = gate {
        let expected = gate.expected(&spec.name, GateStage::PageIn)?;
        super::check_weights(gate.as_ref(), &spec.name, expected, &bytes)?;
        let hashed = matches!(expected, super::Expected::Hash(_));
        shared.lock().checked.insert(spec.id, hashed);
    }
    let start = Instant::now();
    let adapter = Arc::new(LoraAdapter::from_bytes(spec, &bytes, &shared.model)?);
    m.adapter_load_seconds
        .with_label_values(&["device"])
        .observe(start.elapsed().as_secs_f64());
    m.adapter_loads.with_label_values(&["device"]).inc();
    install(shared, spec, adapter)
}

/// Puts a compute-ready adapter into a free slot of the device tier (waiting for one).
fn install(shared: &Shared, spec: &AdapterSpec, adapter: Arc<LoraAdapter>) -> Result<()> {
    let Some(mut st) = wait_for_slot(shared) else {
        return Ok(()); // stopping
    };
    st.device.values_mut().for_each(|e| e.draining = false);
    st.device_changed = true;
    let last_use = st.tick();
    st.stats.device_loads += 1;
    let slot = st
        .free_slots
        .pop()
        .expect("wait_for_slot leaves a free slot");
    shared.slots.fill(slot, adapter);
    st.device.insert(
        spec.id,
        DeviceEntry {
            slot,
            pins: 0,
            last_use,
            draining: false,
            forgotten: false,
            name: spec.name.as_str().into(),
        },
    );
    Ok(())
}

/// Locks the state once the device tier has a free slot (evicting if it can); `None` when the
/// pager is stopping.
fn wait_for_slot(shared: &Shared) -> Option<MutexGuard<'_, State>> {
    let mut st = shared.lock();
    let mut last_drain: Option<Instant> = None;
    while st.free_slots.is_empty() && !st.evict_device(&shared.metrics, &shared.slots) {
        // Every slot is pinned or awaited: drain the least recently used pinned adapter so its
        // pins run out (awaited ones get pinned at the engine's next poll). Another one is added
        // only if no progress was made for a while (a pin may be held for long).
        if last_drain.is_none_or(|t| t.elapsed() >= DRAIN_PATIENCE) {
            if let Some(e) = st
                .device
                .values_mut()
                .filter(|e| e.pins > 0 && !e.draining)
                .min_by_key(|e| e.last_use)
            {
                e.draining = true;
                last_drain = Some(Instant::now());
            }
        }
        st = shared
            .wake_worker
            .wait_timeout(st, DRAIN_PATIENCE)
            .expect("pager lock")
            .0;
        if st.stop {
            return None;
        }
    }
    Some(st)
}
