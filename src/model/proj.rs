//! The seven projections of a Llama block, by which both the base weights and LoRA adapters are
//! indexed (`Proj::index()` is the position in every per-layer array).

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
