//! The budgets of the adapter pager's host and device tiers; `validate` refuses a zero budget.

use crate::error::{Error, Result};
use crate::exec::DeviceKind;

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
    /// The default budgets for an engine on `device`. The device executor allocates its adapter
    /// slot pool up front (slots x `--max-lora-rank` per layer and projection, in the compute
    /// dtype), so there the default slot count (`--max-loras`) is the most distinct adapters one
    /// step may use (`--max-adapters-per-step`), not the CPU executor's 64 (whose slots are only
    /// references to adapters already in host memory).
    pub fn for_device(device: DeviceKind, max_adapters_per_step: usize) -> Self {
        let d = PagerConfig::default();
        match device {
            DeviceKind::Cpu => d,
            _ => PagerConfig {
                device_slots: max_adapters_per_step.min(d.device_slots),
                ..d
            },
        }
    }

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
