//! The registry of named adapters shared by the engine and the HTTP layer. Names are unique;
//! each registered adapter has a stable `AdapterId`. An adapter is validated against the base
//! model when registered, so resolving a name never fails later for a malformed file.

use super::LoraAdapter;
use crate::error::{Error, Result};
use crate::model::ModelConfig;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// Stable identifier of a registered adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdapterId(pub u32);

#[derive(Default)]
struct Inner {
    by_name: HashMap<String, AdapterId>,
    adapters: HashMap<AdapterId, Arc<LoraAdapter>>,
    next: u32,
}

pub struct AdapterRegistry {
    model: ModelConfig,
    inner: RwLock<Inner>,
}

impl AdapterRegistry {
    pub fn new(model: ModelConfig) -> Self {
        AdapterRegistry {
            model,
            inner: RwLock::default(),
        }
    }

    /// Loads, validates and registers the adapter in `dir` under `name`.
    pub fn register(&self, name: &str, dir: &Path) -> Result<AdapterId> {
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(Error::invalid(
                "lora_name",
                "must be non-empty and contain no whitespace",
            ));
        }
        if self.get_id(name).is_some() {
            return Err(Error::invalid(
                "lora_name",
                format!("adapter `{name}` is already registered"),
            ));
        }
        let adapter = Arc::new(LoraAdapter::load(name, dir, &self.model)?);
        let mut inner = self.inner.write().expect("registry lock");
        if inner.by_name.contains_key(name) {
            return Err(Error::invalid(
                "lora_name",
                format!("adapter `{name}` is already registered"),
            ));
        }
        let id = AdapterId(inner.next);
        inner.next += 1;
        inner.by_name.insert(name.to_string(), id);
        inner.adapters.insert(id, adapter);
        Ok(id)
    }

    /// Removes an adapter. Running sequences keep their `Arc` and finish unaffected.
    pub fn unregister(&self, name: &str) -> Result<()> {
        let mut inner = self.inner.write().expect("registry lock");
        let id = inner
            .by_name
            .remove(name)
            .ok_or_else(|| Error::NotFound(format!("adapter `{name}` is not registered")))?;
        inner.adapters.remove(&id);
        Ok(())
    }

    pub fn get_id(&self, name: &str) -> Option<AdapterId> {
        self.inner
            .read()
            .expect("registry lock")
            .by_name
            .get(name)
            .copied()
    }

    pub fn get(&self, id: AdapterId) -> Option<Arc<LoraAdapter>> {
        self.inner
            .read()
            .expect("registry lock")
            .adapters
            .get(&id)
            .cloned()
    }

    /// Resolves a name to its loaded adapter (pins it for as long as the `Arc` lives).
    pub fn resolve(&self, name: &str) -> Result<Arc<LoraAdapter>> {
        let inner = self.inner.read().expect("registry lock");
        inner
            .by_name
            .get(name)
            .and_then(|id| inner.adapters.get(id))
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("The model `{name}` does not exist")))
    }

    /// (name, id) of every registered adapter, sorted by name.
    pub fn list(&self) -> Vec<(String, AdapterId)> {
        let inner = self.inner.read().expect("registry lock");
        let mut v: Vec<_> = inner
            .by_name
            .iter()
            .map(|(n, id)| (n.clone(), *id))
            .collect();
        v.sort();
        v
    }
}
