//! The registry of named adapters shared by the engine and the HTTP layer. Names are unique; each
//! registered adapter has a stable `AdapterId` that is never reused. Registering is lazy: only the
//! config and the safetensors header are read, and both are validated against the base model, so a
//! malformed adapter fails here with a clear message and never inside a batch. Weights are paged in
//! later by the `AdapterPager`. With an integrity gate (`set_gate`), an adapter whose files do not
//! hash to what the gate expects (its on-chain `weightsHash`), or that the gate refuses, is not
//! registered; this reads the weights file once. Every name is in the one adapter-name alphabet
//! (`adapter_name`).

use super::{check_adapter_name, AdapterGate, AdapterRef, AdapterSpec, GateStage, LoraAdapter};
use crate::error::{Error, Result};
use crate::model::ModelConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Stable identifier of a registered adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdapterId(pub u32);

/// Ids from here up name in-memory adapters (never registered); the registry counts up from 0.
const IN_MEMORY_IDS: u32 = 1 << 31;

impl AdapterId {
    /// A new id for an adapter held in memory, distinct from every registered id.
    pub fn fresh_in_memory() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 =
            std::sync::atomic::AtomicU32::new(IN_MEMORY_IDS);
        AdapterId(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

#[derive(Default)]
struct Inner {
    by_name: HashMap<String, Arc<AdapterSpec>>,
    next: u32,
}

pub struct AdapterRegistry {
    model: ModelConfig,
    inner: RwLock<Inner>,
    gate: RwLock<Option<Arc<dyn AdapterGate>>>,
}

fn duplicate(name: &str) -> Error {
    Error::Conflict(format!(
        "adapter `{name}` is already registered; pass \"load_inplace\": true to replace it"
    ))
}

impl AdapterRegistry {
    pub fn new(model: ModelConfig) -> Self {
        AdapterRegistry {
            model,
            inner: RwLock::default(),
            gate: RwLock::default(),
        }
    }

    /// Checks every later registration against `gate`.
    pub fn set_gate(&self, gate: Arc<dyn AdapterGate>) {
        *self.gate.write().expect("registry gate") = Some(gate);
    }

    pub fn model(&self) -> &ModelConfig {
        &self.model
    }

    /// Validates the adapter in `dir` (config + header, no weights) and registers it as `name`.
    pub fn register(&self, name: &str, dir: &Path) -> Result<AdapterId> {
        check_adapter_name(name)?;
        if self.get_id(name).is_some() {
            return Err(duplicate(name));
        }
        let spec = self.read_spec(name, dir)?;
        let mut inner = self.inner.write().expect("registry lock");
        if inner.by_name.contains_key(name) {
            return Err(duplicate(name));
        }
        let id = spec.id;
        inner.by_name.insert(name.to_string(), spec);
        Ok(id)
    }

    /// Registers many adapters at once (start-up): ids are taken in the given order, the folders
    /// are read and validated in parallel, and each registers or fails on its own, as `register`.
    pub fn register_all(&self, adapters: &[(String, PathBuf)]) -> Vec<Result<AdapterId>> {
        use rayon::prelude::*;
        let first = {
            let mut inner = self.inner.write().expect("registry lock");
            inner.next += adapters.len() as u32;
            inner.next - adapters.len() as u32
        };
        let specs: Vec<Result<Arc<AdapterSpec>>> = adapters
            .par_iter()
            .enumerate()
            .map(|(i, (name, dir))| {
                check_adapter_name(name)?;
                self.read_spec_as(AdapterId(first + i as u32), name, dir)
            })
            .collect();
        let mut inner = self.inner.write().expect("registry lock");
        specs
            .into_iter()
            .map(|spec| {
                let spec = spec?;
                if inner.by_name.contains_key(&spec.name) {
                    return Err(duplicate(&spec.name));
                }
                let id = spec.id;
                inner.by_name.insert(spec.name.clone(), spec);
                Ok(id)
            })
            .collect()
    }

    /// Registers `dir` as `name`, replacing the adapter registered under it, if any (vLLM's
    /// `load_inplace`). Returns the new id and the replaced one, whose pager copies the caller
    /// drops; requests already resolved keep the old weights until they finish.
    pub fn replace(&self, name: &str, dir: &Path) -> Result<(AdapterId, Option<AdapterId>)> {
        check_adapter_name(name)?;
        let spec = self.read_spec(name, dir)?;
        let id = spec.id;
        let mut inner = self.inner.write().expect("registry lock");
        let old = inner.by_name.insert(name.to_string(), spec).map(|s| s.id);
        Ok((id, old))
    }

    /// Reads and validates `dir` under a fresh id. Ids are taken before validation so concurrent
    /// registrations never share one; a failed registration just skips its id.
    fn read_spec(&self, name: &str, dir: &Path) -> Result<Arc<AdapterSpec>> {
        let id = {
            let mut inner = self.inner.write().expect("registry lock");
            inner.next += 1;
            AdapterId(inner.next - 1)
        };
        self.read_spec_as(id, name, dir)
    }

    /// Reads and validates `dir` under `id` (and checks it with the gate, if any).
    fn read_spec_as(&self, id: AdapterId, name: &str, dir: &Path) -> Result<Arc<AdapterSpec>> {
        let spec = Arc::new(AdapterSpec::read(id, name, dir, &self.model)?);
        let gate = self.gate.read().expect("registry gate").clone();
        if let Some(gate) = gate {
            let expected = gate.expected(name, GateStage::Register)?;
            if let super::Expected::Hash(_) = expected {
                let bytes = super::regular_file::read(&spec.weights_path())?;
                super::check_weights(gate.as_ref(), name, expected, &bytes)?;
            }
        }
        Ok(spec)
    }

    /// Removes an adapter and returns its id. Requests already resolved keep their `AdapterRef`
    /// and finish unaffected; the caller tells the pager to drop its copies.
    pub fn unregister(&self, name: &str) -> Result<AdapterId> {
        let mut inner = self.inner.write().expect("registry lock");
        inner
            .by_name
            .remove(name)
            .map(|s| s.id)
            .ok_or_else(|| Error::NotFound(format!("adapter `{name}` is not registered")))
    }

    pub fn get_id(&self, name: &str) -> Option<AdapterId> {
        self.spec(name).map(|s| s.id)
    }

    pub fn spec(&self, name: &str) -> Option<Arc<AdapterSpec>> {
        self.inner
            .read()
            .expect("registry lock")
            .by_name
            .get(name)
            .cloned()
    }

    /// Resolves a name to a reference the engine pages in on demand.
    pub fn resolve(&self, name: &str) -> Result<AdapterRef> {
        self.spec(name)
            .map(AdapterRef::Paged)
            .ok_or_else(|| Error::NotFound(format!("The model `{name}` does not exist")))
    }

    /// Reads a registered adapter's weights now, bypassing the pager (tests, tools).
    pub fn load(&self, name: &str) -> Result<Arc<LoraAdapter>> {
        let spec = self
            .spec(name)
            .ok_or_else(|| Error::NotFound(format!("The model `{name}` does not exist")))?;
        let path = spec.weights_path();
        let bytes = super::regular_file::read(&path)?;
        Ok(Arc::new(LoraAdapter::from_bytes(
            &spec,
            &bytes,
            &self.model,
        )?))
    }

    pub fn len(&self) -> usize {
        self.inner.read().expect("registry lock").by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every registered adapter, sorted by name.
    pub fn list(&self) -> Vec<Arc<AdapterSpec>> {
        let inner = self.inner.read().expect("registry lock");
        let mut v: Vec<_> = inner.by_name.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}
