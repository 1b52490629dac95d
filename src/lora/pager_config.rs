//! The budgets of the adapter pager's host and device tiers; `validate` refuses a zero budget.

use crate::error::{Error, Result};

/// Budgets of the host and device tiers.
#[derive(Debug, Clone)]
pub struct PagerConfig {
    /// Adapters resident in the compute-ready layout at once.
    pub device_slots: usize,
    /// Bytes of adapter files kept in host memory.
    pub host_bytes: usize,
    /// Adapter files kept in host memory.
    pub host_slots: usize,
}

impl Default for PagerConfig {
    fn default() -> Self {
        PagerConfig {
            device_slots: 64,
            host_bytes: 2 << 30,
            host_slots: 4096,
        }
    }
}

impl PagerConfig {
    pub fn validate(&self) -> Result<()> {
        for (v, name) in [
            (self.device_slots, "device_slots"),
            (self.host_bytes, "host_bytes"),
            (self.host_slots, "host_slots"),
        ] {
            if v == 0 {
                return Err(Error::invalid(name, "must be > 0"));
            }
        }
        Ok(())
    }
}
