//! LoRA adapters: the PEFT on-disk format (`adapter`), the registry of named adapters
//! (`registry`), and the per-batch segment layout handed to SGMV (`batch`). Adapters are never
//! merged into base weights; a running sequence holds an `Arc` of its adapters, which pins them.

mod adapter;
mod batch;
mod registry;

pub use adapter::{LoraAdapter, LoraConfig, LoraWeights};
pub use batch::LoraBatch;
pub use registry::{AdapterId, AdapterRegistry};

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
