//! Adapters named by Hugging Face hub id (`org/name`, optionally `org/name@revision`), found in the
//! local hub cache through the `hf-hub` crate's `Cache` (layout `models--org--name/refs/<rev>` ->
//! `snapshots/<commit>/<file>`). The cache root is `HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`, as for the Python tools. An adapter missing from the cache is
//! downloaded into it (its two PEFT files only) from `HF_ENDPOINT` (default `https://huggingface.co`,
//! token from `HF_TOKEN` or the cache's token file) by `hub_download` (size cap, deadline), unless
//! `HF_HUB_OFFLINE=1`: then a missing one is a clear error (naming no server path). Ids and
//! revisions are checked by the hub's rules (`HubId`) before the cache or the network is touched.
//! Blocking: the server calls it from `spawn_blocking`.

use super::hub_download::HubClient;
use super::{AdapterId, AdapterRegistry, HubId, CONFIG_FILE, WEIGHTS_FILE};
use crate::error::{Error, Result};
use hf_hub::{Cache, Repo, RepoType};
use std::path::{Path, PathBuf};

/// The hub cache the environment points at.
pub fn cache_from_env() -> Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(p) if !p.is_empty() => Cache::new(PathBuf::from(p)),
        _ => Cache::from_env(),
    }
}

/// `org/name[@revision]` -> (repo id, revision); `None` unless `id` passes the hub's rules
/// (`HubId::parse`), so neither part can step out of the cache.
pub fn parse_id(id: &str) -> Option<(&str, &str)> {
    HubId::parse(id).ok()?;
    Some(id.split_once('@').unwrap_or((id, "main")))
}

/// The snapshot folder holding the adapter's PEFT files in `cache`.
pub fn resolve_in(cache: &Cache, id: &str) -> Result<PathBuf> {
    HubId::parse(id)?;
    let (repo_id, rev) = parse_id(id).expect("checked by HubId::parse");
    let repo = cache.repo(Repo::with_revision(
        repo_id.to_string(),
        RepoType::Model,
        rev.to_string(),
    ));
    let missing = |file: &str| {
        Error::NotFound(format!(
            "hub adapter `{id}`: {file} is not in the local hub cache (offline: populate the cache, e.g. `huggingface-cli download {repo_id}`, or unset HF_HUB_OFFLINE)"
        ))
    };
    let config = repo.get(CONFIG_FILE).ok_or_else(|| missing(CONFIG_FILE))?;
    let weights = repo
        .get(WEIGHTS_FILE)
        .ok_or_else(|| missing(WEIGHTS_FILE))?;
    let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
    if weights.parent() != Some(dir.as_path()) {
        return Err(Error::Internal(format!(
            "hub adapter `{id}`: config and weights resolved to different snapshots"
        )));
    }
    Ok(dir)
}

/// True when `HF_HUB_OFFLINE` forbids network access (`1`, `true`, `yes`, `on`).
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// The snapshot folder of `id` in `cache`, downloading its PEFT files from `endpoint` first when
/// they are missing (never when offline). A failed download is a clear error and leaves the cache
/// without a partial snapshot (a blob is written to a temporary name and renamed when complete).
pub fn fetch_into(cache: &Cache, endpoint: &str, id: &str) -> Result<PathBuf> {
    let cached = resolve_in(cache, id);
    if cached.is_ok() || offline() {
        return cached;
    }
    let (repo_id, rev) = parse_id(id).expect("resolve_in checked the id");
    let client = HubClient::new(
        endpoint,
        std::env::var("HF_TOKEN").ok().or_else(|| cache.token()),
    );
    for file in [CONFIG_FILE, WEIGHTS_FILE] {
        let what = format!("hub adapter `{id}`: downloading {file} from {endpoint} failed");
        client.download(cache, repo_id, rev, file, &what)?;
    }
    resolve_in(cache, id)
}

/// `fetch_into` for an id already checked by the hub's rules.
pub fn fetch_id(cache: &Cache, endpoint: &str, id: &HubId) -> Result<PathBuf> {
    fetch_into(cache, endpoint, &format!("{}@{}", id.repo, id.revision))
}

/// The hub endpoint the environment names (`HF_ENDPOINT`), else the public hub.
pub fn endpoint_from_env() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".to_string())
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
