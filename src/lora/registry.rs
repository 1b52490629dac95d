//! The registry of named adapters shared by the engine and the HTTP layer. Names are unique; each
//! registered adapter has a stable `AdapterId` that is never reused. Registering is lazy: only the
//! config and the safetensors header are read, and both are validated against the base model, so a
//! malformed adapter fails here with a clear message and never inside a batch. Weights are paged in
//! later by the `AdapterPager`. With an integrity gate (`set_gate`), an adapter whose files do not
//! hash to what the gate expects (its on-chain `weightsHash`), or that the gate refuses, is not
//! registered; this reads the weights file once. Every name is in the one adapter-name alphabet
//! (`adapter_name`).
//!
//! Start-up folders may be registered before they are read (`register_pending`): a pending adapter
//! holds its name and id but no `AdapterSpec` yet, and is validated exactly as above either by
//! `validate_pending` (a background pass after start) or on first use (`spec`, `resolve`), whichever
//! comes first. Only a validated `AdapterSpec` ever leaves the registry, so nothing invalid is paged
//! in or served; a pending adapter that fails is moved to `refused`, and a request naming it gets a
//! 404 saying why. `list` (and so `/v1/models`) validates what is still pending before answering.

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
    /// Registered but not yet read (`register_pending`): name -> (id, folder).
    pending: HashMap<String, (AdapterId, PathBuf)>,
    /// Pending adapters that failed validation: name -> why.
    refused: HashMap<String, String>,
    next: u32,
}

impl Inner {
    fn taken(&self, name: &str) -> bool {
        self.by_name.contains_key(name) || self.pending.contains_key(name)
    }
}

pub struct AdapterRegistry {
    model: ModelConfig,
    inner: RwLock<Inner>,
    gate: RwLock<Option<Arc<dyn AdapterGate>>>,
    /// Held by one `validate_pending` pass at a time (a second one waits, then finds less to do).
    validating: std::sync::Mutex<()>,
}

fn duplicate(name: &str) -> Error {
    Error::conflict(
        "lora_name",
        format!(
            "adapter `{name}` is already registered; pass \"load_inplace\": true to replace it"
        ),
    )
}

impl AdapterRegistry {
    pub fn new(model: ModelConfig) -> Self {
        AdapterRegistry {
            model,
            inner: RwLock::default(),
            gate: RwLock::default(),
            validating: std::sync::Mutex::new(()),
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
        if inner.taken(name) {
            return Err(duplicate(name));
        }
        let id = spec.id;
        inner.refused.remove(name);
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
                if inner.taken(&spec.name) {
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
        inner.refused.remove(name);
        let pending = inner.pending.remove(name).map(|(id, _)| id);
        let old = inner.by_name.insert(name.to_string(), spec).map(|s| s.id);
        Ok((id, old.or(pending)))
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
        self.read_spec_at(id, name, dir, GateStage::Register)
    }

    /// `read_spec_as`, asking the gate at `stage`.
    fn read_spec_at(
        &self,
        id: AdapterId,
        name: &str,
        dir: &Path,
        stage: GateStage,
    ) -> Result<Arc<AdapterSpec>> {
        let spec = Arc::new(AdapterSpec::read(id, name, dir, &self.model)?);
        let gate = self.gate.read().expect("registry gate").clone();
        if let Some(gate) = gate {
            let expected = gate.expected(name, stage)?;
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
        let pending = inner.pending.remove(name).map(|(id, _)| id);
        inner
            .by_name
            .remove(name)
            .map(|s| s.id)
            .or(pending)
            .ok_or_else(|| Error::NotFound(format!("adapter `{name}` is not registered")))
    }

    /// The id of a registered (validated or pending) adapter; reads nothing.
    pub fn get_id(&self, name: &str) -> Option<AdapterId> {
        let inner = self.inner.read().expect("registry lock");
        let pending = inner.pending.get(name).map(|(id, _)| *id);
        inner.by_name.get(name).map(|s| s.id).or(pending)
    }

    /// Every registered name, pending ones included (nothing is read).
    pub fn names(&self) -> Vec<String> {
        let inner = self.inner.read().expect("registry lock");
        let pending = inner.pending.keys();
        inner.by_name.keys().chain(pending).cloned().collect()
    }

    /// The validated spec of `name`; a pending adapter is validated now (`None` if it fails).
    pub fn spec(&self, name: &str) -> Option<Arc<AdapterSpec>> {
        let pending = {
            let inner = self.inner.read().expect("registry lock");
            if let Some(spec) = inner.by_name.get(name) {
                return Some(spec.clone());
            }
            inner.pending.get(name).cloned()?
        };
        self.settle(name, pending)
    }

    /// Resolves a name to a reference the engine pages in on demand.
    pub fn resolve(&self, name: &str) -> Result<AdapterRef> {
        if let Some(spec) = self.spec(name) {
            return Ok(AdapterRef::Paged(spec));
        }
        let inner = self.inner.read().expect("registry lock");
        Err(Error::NotFound(match inner.refused.get(name) {
            Some(why) => {
                format!("The model `{name}` does not exist (its folder was refused: {why})")
            }
            None => format!("The model `{name}` does not exist"),
        }))
    }

    /// Registers start-up folders without reading them: names are checked and ids taken in the
    /// given order; each is validated later by `validate_pending` or on first use.
    pub fn register_pending(&self, adapters: &[(String, PathBuf)]) -> Vec<Result<AdapterId>> {
        let mut inner = self.inner.write().expect("registry lock");
        adapters
            .iter()
            .map(|(name, dir)| {
                check_adapter_name(name)?;
                if inner.taken(name) {
                    return Err(duplicate(name));
                }
                let id = AdapterId(inner.next);
                inner.next += 1;
                inner.pending.insert(name.clone(), (id, dir.clone()));
                Ok(id)
            })
            .collect()
    }

    /// Validates every pending adapter (in parallel); returns `(validated, refused)` with each
    /// refused name and why.
    pub fn validate_pending(&self) -> (usize, Vec<(String, String)>) {
        use rayon::prelude::*;
        let _one_pass = self.validating.lock().expect("registry validating");
        let todo: Vec<(String, (AdapterId, PathBuf))> = {
            let inner = self.inner.read().expect("registry lock");
            let p = &inner.pending;
            p.iter().map(|(n, e)| (n.clone(), e.clone())).collect()
        };
        let settled: Vec<(String, bool)> = todo
            .into_par_iter()
            .map(|(name, entry)| {
                let ok = self.settle(&name, entry).is_some();
                (name, ok)
            })
            .collect();
        let inner = self.inner.read().expect("registry lock");
        let mut refused: Vec<(String, String)> = settled
            .iter()
            .filter(|(_, ok)| !ok)
            .filter_map(|(n, _)| inner.refused.get(n).map(|w| (n.clone(), w.clone())))
            .collect();
        refused.sort();
        let ok = settled.iter().filter(|(_, ok)| *ok).count();
        (ok, refused)
    }

    /// Validates the pending `(id, dir)` of `name` and moves it to `by_name` or `refused`, unless
    /// it was unregistered or replaced meanwhile (then the result is dropped).
    fn settle(&self, name: &str, (id, dir): (AdapterId, PathBuf)) -> Option<Arc<AdapterSpec>> {
        let read = self.read_spec_at(id, name, &dir, GateStage::StartUp);
        let mut inner = self.inner.write().expect("registry lock");
        if inner.pending.get(name).map(|(i, _)| *i) != Some(id) {
            // Someone else settled, replaced or removed it first: answer with what is there now.
            return inner.by_name.get(name).filter(|s| s.id == id).cloned();
        }
        inner.pending.remove(name);
        match read {
            Ok(spec) => {
                inner.by_name.insert(name.to_string(), spec.clone());
                Some(spec)
            }
            Err(e) => {
                inner.refused.insert(name.to_string(), e.to_string());
                None
            }
        }
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

    /// Registered adapters, pending ones included.
    pub fn len(&self) -> usize {
        let inner = self.inner.read().expect("registry lock");
        inner.by_name.len() + inner.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every registered adapter, sorted by name; pending ones are validated first, so the list
    /// never names one that would be refused.
    pub fn list(&self) -> Vec<Arc<AdapterSpec>> {
        if !self.inner.read().expect("registry lock").pending.is_empty() {
            self.validate_pending();
        }
        let inner = self.inner.read().expect("registry lock");
        let mut v: Vec<_> = inner.by_name.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}
