//! A request's claim on its adapters (`Lease`): `poll` until every adapter is on device, then the
//! lease pins them until it is dropped. What always holds: a lease is counted as wanting its
//! adapters until it pins them (so they are not evicted for other page-ins), and drop releases
//! exactly what it took (its pins, or its wants); a failed or refused page-in fails the poll.

use super::pager::Shared;
use super::pager_state::State;
use super::{AdapterSlot, AdapterSpec};
use crate::error::{Error, Result};
use std::sync::Arc;
use std::time::Instant;

/// A request's claim on its adapters: `poll` until ready; pins are held until drop.
pub struct Lease {
    pub(super) shared: Arc<Shared>,
    pub(super) specs: Vec<Arc<AdapterSpec>>,
    pub(super) pinned: Option<Vec<AdapterSlot>>,
    /// When the lease was taken, if an adapter of it was not on device then.
    pub(super) missed_at: Option<Instant>,
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
