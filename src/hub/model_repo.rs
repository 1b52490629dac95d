//! Base models by hub id: `org/name[@rev]` (an HF safetensors repo: `config.json`, one
//! `model.safetensors` or the shards a `model.safetensors.index.json` names, and the tokenizer and
//! generation configs when the repo has them) or `org/name[@rev]:file.gguf` (one GGUF file; also
//! `--gguf-file`). What always holds: a `ModelRef` passed the hub's id and file-name rules, shard
//! names from a downloaded index are checked by the same rules before they are fetched, and a model
//! whose config and weights are all cached is served from the cache without touching the network.

use super::{cached_snapshot, client, hub_id, not_cached, offline, HubId, MODEL_LIMITS};
use crate::error::{Error, Result};
use hf_hub::Cache;
use std::path::{Path, PathBuf};

const WHAT: &str = "hub model";
const CONFIG: &str = "config.json";
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";
/// Fetched with the weights when the repo has them (a 404 is fine).
const OPTIONAL: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
];

/// A model on the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    pub id: HubId,
    /// The GGUF file of the repo to load; `None`: the repo is an HF safetensors model.
    pub gguf: Option<String>,
}

/// Where a `--model` argument leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSource {
    /// A `.gguf` file or an HF folder on this machine.
    pub path: PathBuf,
    /// The name to serve it under when it came from the hub (`org/name`).
    pub hub_name: Option<String>,
}

impl ModelRef {
    /// Parses `org/name[@rev][:file.gguf]`; `gguf_file` names the file when the id does not.
    pub fn parse(arg: &str, gguf_file: Option<&str>) -> Result<ModelRef> {
        let (id, file) = match arg.split_once(':') {
            Some((id, f)) => (id, Some(f)),
            None => (arg, gguf_file),
        };
        let id = HubId::parse(id).map_err(|e| match e {
            Error::InvalidRequest { message, .. } => Error::invalid("model", message),
            other => other,
        })?;
        if let Some(f) = file {
            hub_id::check_file_name(f)?;
            if !f.ends_with(".gguf") {
                return Err(Error::invalid(
                    "model",
                    format!("`{f}`: a file of a hub model must be a .gguf file"),
                ));
            }
        }
        Ok(ModelRef {
            id,
            gguf: file.map(String::from),
        })
    }
}

/// Resolves a `--model` argument: an existing file or folder as it is (`gguf_file` inside a
/// folder), else a hub id from the environment's cache, downloaded from `HF_ENDPOINT` when missing.
pub fn resolve_model(arg: &str, gguf_file: Option<&str>) -> Result<ModelSource> {
    let local = Path::new(arg);
    // `dir/model.gguf` is a (missing) local file, `org/name:model.gguf` a file of a hub repo.
    let (id, file) = arg
        .split_once(':')
        .map_or((arg, None), |(i, f)| (i, Some(f)));
    let is_id = hub_id::looks_like(id) && (file.is_some() || !arg.ends_with(".gguf"));
    if local.exists() || !is_id {
        let path = match gguf_file {
            Some(f) if local.is_dir() => local.join(f),
            _ => local.to_path_buf(),
        };
        return Ok(ModelSource {
            path,
            hub_name: None,
        });
    }
    let r = ModelRef::parse(arg, gguf_file)?;
    let path = fetch_model(&super::cache_from_env(), &super::endpoint_from_env(), &r)?;
    Ok(ModelSource {
        path,
        hub_name: Some(r.id.repo),
    })
}

/// The local path of `r` (the GGUF file, or the snapshot folder of an HF model), downloading what
/// is missing first (never when `HF_HUB_OFFLINE=1`).
pub fn fetch_model(cache: &Cache, endpoint: &str, r: &ModelRef) -> Result<PathBuf> {
    if let Some(f) = &r.gguf {
        let dir = super::fetch_files(cache, endpoint, (WHAT, MODEL_LIMITS), &r.id, &[f.as_str()])?;
        return Ok(dir.join(f));
    }
    let cached = cached_hf(cache, &r.id);
    if cached.is_ok() || offline() {
        return cached;
    }
    let hub = client(cache, endpoint, MODEL_LIMITS);
    let fetch = |file: &str, required: bool| -> Result<Option<PathBuf>> {
        let msg = format!(
            "{WHAT} `{}`: downloading {file} from {endpoint} failed",
            r.id.repo
        );
        match required {
            true => hub
                .download(cache, &r.id.repo, &r.id.revision, file, &msg)
                .map(Some),
            false => hub.download_optional(cache, &r.id.repo, &r.id.revision, file, &msg),
        }
    };
    fetch(CONFIG, true)?;
    for f in OPTIONAL {
        fetch(f, false)?;
    }
    match fetch(INDEX, false)? {
        Some(index) => {
            for shard in shard_names(&index)? {
                fetch(&shard, true)?;
            }
        }
        None => {
            fetch(SINGLE, true)?;
        }
    }
    cached_hf(cache, &r.id)
}

/// The snapshot of an HF model whose config and every weight file are cached.
fn cached_hf(cache: &Cache, id: &HubId) -> Result<PathBuf> {
    let dir = cached_snapshot(cache, WHAT, id, &[CONFIG])?;
    let index = dir.join(INDEX);
    let weights = match index.exists() {
        true => shard_names(&index)?,
        false => vec![SINGLE.to_string()],
    };
    match weights.iter().find(|w| !dir.join(w).exists()) {
        Some(w) => Err(not_cached(WHAT, id, w)),
        None => Ok(dir),
    }
}

/// The shard files an index names, each checked by the hub's file-name rules.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let bad = |m: &str| Error::NotFound(format!("{WHAT}: its {INDEX} {m}"));
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|_| bad("is not JSON"))?;
    let map = v
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| bad("has no weight_map"))?;
    let mut names: Vec<String> = map
        .values()
        .map(|s| {
            s.as_str()
                .map(String::from)
                .ok_or_else(|| bad("is malformed"))
        })
        .collect::<Result<_>>()?;
    names.sort();
    names.dedup();
    for n in &names {
        hub_id::check_file_name(n)?;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_model_ids() {
        let r = ModelRef::parse("org/name", None).unwrap();
        assert_eq!(
            (r.id.repo.as_str(), r.id.revision.as_str()),
            ("org/name", "main")
        );
        assert_eq!(r.gguf, None);
        let r = ModelRef::parse("org/name@v1:q4/m.Q4_K_M.gguf", None).unwrap();
        assert_eq!(r.id.revision, "v1");
        assert_eq!(r.gguf.as_deref(), Some("q4/m.Q4_K_M.gguf"));
        let r = ModelRef::parse("org/name", Some("m.gguf")).unwrap();
        assert_eq!(r.gguf.as_deref(), Some("m.gguf"));
        for bad in [
            "org/name:../../etc/passwd.gguf",
            "org/name:model.bin",
            "org/na me",
            "org/name@..:m.gguf",
        ] {
            assert!(ModelRef::parse(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn local_paths_are_not_ids() {
        let here = env!("CARGO_MANIFEST_DIR");
        let s = resolve_model(here, None).unwrap();
        assert_eq!((s.path.as_path(), s.hub_name), (Path::new(here), None));
        // A relative .gguf path that does not exist is a local path, not a repo id.
        let s = resolve_model("models/absent.gguf", None).unwrap();
        assert_eq!(s.hub_name, None);
    }
}
