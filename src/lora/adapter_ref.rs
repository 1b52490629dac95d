//! What a request names as its adapter: a registered one that the pager brings in on demand, or a
//! caller-owned adapter already in the compute-ready layout (tests, benchmarks), which the pager
//! never sees and never budgets.

use super::{AdapterSpec, LoraAdapter};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub enum AdapterRef {
    /// A registered adapter; its weights are paged in before the request is scheduled.
    Paged(Arc<AdapterSpec>),
    /// Weights held by the caller, ready to run.
    Fixed(Arc<LoraAdapter>),
}

impl AdapterRef {
    pub fn name(&self) -> &str {
        match self {
            AdapterRef::Paged(s) => &s.name,
            AdapterRef::Fixed(a) => &a.name,
        }
    }

    /// The largest rank of any of the adapter's pairs (0 when it adapts nothing).
    pub fn max_rank(&self) -> usize {
        match self {
            AdapterRef::Paged(s) => s.ranks.iter().flatten().flatten().copied().max(),
            AdapterRef::Fixed(a) => a.layers.iter().flatten().flatten().map(|w| w.rank).max(),
        }
        .unwrap_or(0)
    }

    /// The adapter's folder (empty for generated in-memory adapters).
    pub fn dir(&self) -> &std::path::Path {
        match self {
            AdapterRef::Paged(s) => &s.dir,
            AdapterRef::Fixed(a) => &a.path,
        }
    }
}

impl From<Arc<LoraAdapter>> for AdapterRef {
    fn from(a: Arc<LoraAdapter>) -> Self {
        AdapterRef::Fixed(a)
    }
}

impl From<Arc<AdapterSpec>> for AdapterRef {
    fn from(s: Arc<AdapterSpec>) -> Self {
        AdapterRef::Paged(s)
    }
}
