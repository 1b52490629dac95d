//! LoRA adapters: the PEFT on-disk format (`adapter`), what registration validates and records
//! without reading weights (`spec`), the registry of named adapters (`registry`), how a request
//! names its adapter (`adapter_ref`), the disk -> host -> device tiers (`pager`), the hub cache
//! (`hub`), regular-file-only reads of adapter files (`regular_file`) and the per-batch segment layout handed to SGMV (`batch`). Adapters are never merged
//! into base weights; a running sequence holds a pager `Lease` on its adapters, which pins them.

mod adapter;
mod adapter_ref;
mod batch;
pub mod hub;
mod hub_download;
mod pager;
mod registry;
pub mod regular_file;
mod spec;

pub use adapter::{LoraAdapter, LoraConfig, LoraWeights};
pub use adapter_ref::AdapterRef;
pub use batch::LoraBatch;
pub use pager::{AdapterPager, Lease, PagerConfig, PagerStats, Tier};
pub use registry::{AdapterId, AdapterRegistry};
pub use spec::{AdapterSpec, CONFIG_FILE, WEIGHTS_FILE};

/// The seven projections of a Llama block that LoRA may target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The HF module name (`q_proj`, ...).
    pub fn module_name(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }

    pub fn from_module_name(s: &str) -> Option<Proj> {
        Proj::ALL.into_iter().find(|p| p.module_name() == s)
    }
}
