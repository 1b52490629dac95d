//! The pager's page-in thread (`worker`): serves the queue in order, bringing each adapter disk ->
//! host -> device, waiting for a free device slot. What always holds: page-ins never run on the
//! engine thread; a read error is retried at once a few times before it counts as a failure; a
//! failure is recorded with a doubling backoff, never final; with an integrity gate the bytes are
//! checked before they are installed; when every slot is pinned the least recently used
//! lease-pinned adapter is drained (an admin-held one never is), so no page-in waits forever.

use super::pager::Shared;
use super::pager_state::{DeviceEntry, Failure, State};
use super::{AdapterSpec, GateStage, LoraAdapter};
use crate::error::{Error, Result};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

/// How long a page-in waits on one draining adapter before draining another as well.
const DRAIN_PATIENCE: Duration = Duration::from_millis(50);

/// Wait before a failed adapter is tried again; doubles with each failure in a row.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(10);
/// Pauses between the immediate retries of a failed read.
const READ_RETRIES: [Duration; 2] = [Duration::from_millis(20), Duration::from_millis(100)];

/// The page-in thread: serves the queue in order until the pager is dropped.
pub(super) fn worker(shared: &Shared) {
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
            // An admin-held adapter is never drained: its pin does not run out.
            let State { device, held, .. } = &mut *st;
            if let Some((_, e)) = device
                .iter_mut()
                .filter(|(id, e)| e.pins > 0 && !e.draining && !held.contains(id))
                .min_by_key(|(_, e)| e.last_use)
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
