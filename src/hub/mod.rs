//! The Hugging Face hub, one code path for everything openlora fetches by id: ids and repo file
//! names checked by the hub's rules (`hub_id`) before the cache or the network is touched, the
//! local hub cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`, layout
//! `models--org--name/refs/<rev>` -> `snapshots/<commit>/<file>`, read through `hf-hub`'s
//! `Cache`), and downloads into it (`download`: size cap, deadline, progress) from `HF_ENDPOINT`
//! (token from `HF_TOKEN` or the cache's token file) unless `HF_HUB_OFFLINE=1`. Two kinds of repo
//! are read through it: PEFT adapters (`lora::hub`) and base models (`model_repo`). Errors name
//! the id, never a server path. Blocking: the server calls it from `spawn_blocking`.

pub mod download;
pub mod hub_id;
mod model_repo;

pub use download::{HubClient, Limits, ADAPTER_LIMITS, MODEL_LIMITS};
pub use hub_id::HubId;
pub use model_repo::{fetch_model, resolve_model, ModelRef, ModelSource};

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

/// The hub endpoint the environment names (`HF_ENDPOINT`), else the public hub.
pub fn endpoint_from_env() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".to_string())
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

/// A download client for `endpoint` with the environment's token and limits (`defaults` unless
/// the environment sets them).
pub fn client(cache: &Cache, endpoint: &str, defaults: Limits) -> HubClient {
    HubClient::new(
        endpoint,
        std::env::var("HF_TOKEN").ok().or_else(|| cache.token()),
        defaults,
    )
}

/// The error for a file of `id` missing from the cache (`what`: "hub adapter", "hub model").
pub fn not_cached(what: &str, id: &HubId, file: &str) -> Error {
    Error::NotFound(format!(
        "{what} `{}@{}`: {file} is not in the local hub cache (offline: populate the cache, e.g. `huggingface-cli download {}`, or unset HF_HUB_OFFLINE)",
        id.repo, id.revision, id.repo
    ))
}

/// The snapshot folder of `id` in `cache` holding every one of `files` (one snapshot: the one
/// the revision's ref names); the error names the first file missing.
pub fn cached_snapshot(cache: &Cache, what: &str, id: &HubId, files: &[&str]) -> Result<PathBuf> {
    let repo = cache.repo(Repo::with_revision(
        id.repo.clone(),
        RepoType::Model,
        id.revision.clone(),
    ));
    let mut dir: Option<PathBuf> = None;
    for file in files {
        let path = repo.get(file).ok_or_else(|| not_cached(what, id, file))?;
        let parent = path
            .ancestors()
            .nth(file.matches('/').count() + 1)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        match &dir {
            Some(d) if *d != parent => {
                return Err(Error::Internal(format!(
                    "{what} `{}`: its files resolved to different snapshots",
                    id.repo
                )))
            }
            _ => dir = Some(parent),
        }
    }
    dir.ok_or_else(|| Error::Internal(format!("{what} `{}`: no files asked for", id.repo)))
}

/// The snapshot folder holding `files` of `id`, downloading the missing ones from `endpoint`
/// first (never when offline). A failed download is a clear error and leaves no partial file.
pub fn fetch_files(
    cache: &Cache,
    endpoint: &str,
    (what, limits): (&str, Limits),
    id: &HubId,
    files: &[&str],
) -> Result<PathBuf> {
    let cached = cached_snapshot(cache, what, id, files);
    if cached.is_ok() || offline() {
        return cached;
    }
    let client = client(cache, endpoint, limits);
    for file in files {
        let msg = format!(
            "{what} `{}`: downloading {file} from {endpoint} failed",
            id.repo
        );
        client.download(cache, &id.repo, &id.revision, file, &msg)?;
    }
    cached_snapshot(cache, what, id, files)
}
