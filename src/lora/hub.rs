//! Adapters named by Hugging Face hub id (`org/name`, optionally `org/name@revision`): their two
//! PEFT files found in the local hub cache, or downloaded into it, through `crate::hub` (ids
//! checked by the hub's rules before the cache or the network is touched; size cap, deadline,
//! `HF_HUB_OFFLINE`). Blocking: the server calls it from `spawn_blocking`.

use super::{AdapterId, AdapterRegistry, CONFIG_FILE, WEIGHTS_FILE};
use crate::error::Result;
use crate::hub::{self as h, HubId};
use hf_hub::Cache;
use std::path::{Path, PathBuf};

pub use crate::hub::{cache_from_env, endpoint_from_env, offline};

const WHAT: &str = "hub adapter";
const FILES: [&str; 2] = [CONFIG_FILE, WEIGHTS_FILE];

/// `org/name[@revision]` -> (repo id, revision); `None` unless `id` passes the hub's rules
/// (`HubId::parse`), so neither part can step out of the cache.
pub fn parse_id(id: &str) -> Option<(&str, &str)> {
    HubId::parse(id).ok()?;
    Some(id.split_once('@').unwrap_or((id, "main")))
}

/// The snapshot folder holding the adapter's PEFT files in `cache`.
pub fn resolve_in(cache: &Cache, id: &str) -> Result<PathBuf> {
    h::cached_snapshot(cache, WHAT, &HubId::parse(id)?, &FILES)
}

/// The snapshot folder of `id` in `cache`, downloading its PEFT files from `endpoint` first when
/// they are missing (never when offline). A failed download is a clear error and leaves the cache
/// without a partial snapshot (a blob is written to a temporary name and renamed when complete).
pub fn fetch_into(cache: &Cache, endpoint: &str, id: &str) -> Result<PathBuf> {
    fetch_id(cache, endpoint, &HubId::parse(id)?)
}

/// `fetch_into` for an id already checked by the hub's rules.
pub fn fetch_id(cache: &Cache, endpoint: &str, id: &HubId) -> Result<PathBuf> {
    h::fetch_files(cache, endpoint, (WHAT, h::ADAPTER_LIMITS), id, &FILES)
}

/// A local folder as is, else a hub id from the environment's cache (downloaded when missing).
pub fn local_or_cached(path_or_id: &str) -> Result<PathBuf> {
    let p = Path::new(path_or_id);
    if p.exists() || parse_id(path_or_id).is_none() {
        return Ok(p.to_path_buf());
    }
    fetch_into(&cache_from_env(), &endpoint_from_env(), path_or_id)
}

/// Registers the hub adapter `id` from `cache` under its repo id (`org/name`), downloading it
/// from the environment's endpoint when it is not cached.
pub fn register_from(registry: &AdapterRegistry, cache: &Cache, id: &str) -> Result<AdapterId> {
    let dir = fetch_into(cache, &endpoint_from_env(), id)?;
    let name = parse_id(id).map_or(id, |(repo, _)| repo);
    registry.register(name, &dir)
}

/// Registers the hub adapter `id` from the environment's cache.
pub fn register(registry: &AdapterRegistry, id: &str) -> Result<AdapterId> {
    register_from(registry, &cache_from_env(), id)
}
