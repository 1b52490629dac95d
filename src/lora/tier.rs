//! Where an adapter's weights are (`Tier`: device, host or disk) and the pager's counters
//! (`PagerStats`), as the pager reports them.

/// Where an adapter's weights are now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Device,
    Host,
    Disk,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Device => "device",
            Tier::Host => "host",
            Tier::Disk => "disk",
        }
    }
}

/// Counters since the pager started, and the current residency.
#[derive(Debug, Clone, Default)]
pub struct PagerStats {
    pub device_resident: usize,
    pub host_resident: usize,
    pub host_bytes: usize,
    /// Device-tier adapters with at least one pin (a lease's or the admin's).
    pub pinned: usize,
    /// Adapters pinned by the admin (on device or being paged in).
    pub held: usize,
    /// Lease requests whose adapter was on device already.
    pub hits: u64,
    /// Lease requests whose adapter had to be paged in.
    pub misses: u64,
    pub device_evictions: u64,
    pub host_evictions: u64,
    /// Files read from disk into host memory.
    pub disk_reads: u64,
    /// Host bytes turned into the compute-ready layout.
    pub device_loads: u64,
    pub failures: u64,
}
