//! LoRA adapters: the PEFT on-disk format (`adapter`), what registration validates and records
//! without reading weights (`spec`), the registry of named adapters (`registry`), how a request
//! names its adapter (`adapter_ref`), the alphabet of adapter names (`adapter_name`), the disk -> host -> device tiers (`pager`, its
//! bookkeeping `pager_state`, its thread `pager_worker`, a request's `lease`) and the
//! residency series routers read (`residency`), the hub cache
//! (`hub`, through `crate::hub`: ids, cache, downloads), the safetensors header read at registration (`header`), the roots runtime-loaded
//! adapters are confined to (`adapter_roots`), regular-file-only reads of adapter files
//! (`regular_file`), the integrity gate checked at registration and page-in (`adapter_gate`),
//! what the gate said about each adapter (`integrity`),
//! which adapter occupies each device slot (`slot_table`) and random adapters
//! for tests and benchmarks (`random`). Adapters are never merged into base weights; a running
//! sequence holds a pager `Lease` on its adapters, which pins them.

mod adapter;
mod adapter_gate;
mod adapter_name;
mod adapter_ref;
mod adapter_roots;
mod header;
pub mod hub;
mod integrity;
mod lease;
mod pager;
mod pager_config;
mod pager_state;
mod pager_worker;
mod random;
mod registry;
pub mod regular_file;
mod residency;
mod slot_table;
mod spec;
mod tier;

pub use crate::hub::HubId;
pub use adapter::{LoraAdapter, LoraConfig, LoraWeights};
pub use adapter_gate::{check_weights, weights_hash, AdapterGate, Expected, GateStage};
pub use adapter_name::{check_adapter_name, MAX_NAME_LEN, NAME_ALPHABET};
pub use adapter_ref::AdapterRef;
pub use adapter_roots::{AdapterRoots, MAX_CONFIG_BYTES, MAX_WEIGHTS_BYTES};
pub use integrity::Integrity;
pub use pager::{AdapterPager, Lease, PagerConfig, PagerStats, Tier};
pub use random::{random_adapter, write_random_adapter};
pub use registry::{AdapterId, AdapterRegistry};
pub use slot_table::{AdapterSlot, SlotEntry, SlotTable};
pub use spec::{AdapterSpec, CONFIG_FILE, WEIGHTS_FILE};

pub use crate::model::Proj;
