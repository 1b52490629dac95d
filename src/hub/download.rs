//! One file of a hub repo downloaded into the local hub cache, in the layout `hf-hub` and the
//! Python tools read (`blobs/<etag>`, `snapshots/<commit>/<file>` -> the blob, `refs/<revision>`),
//! within limits: a size cap (`Content-Length` checked first, the body cut at the cap + 1 byte
//! anyway) and one deadline for connect, redirects and body together; bytes, rate and ETA are
//! reported through `progress`. Blocking: run it off the async workers (`spawn_blocking`).
//!
//! What always holds: a blob appears under its final name only complete and within the cap (it
//! is written to a temporary name and renamed), so a failed or oversized download leaves no
//! snapshot behind.

use crate::error::{Error, Result};
use crate::progress::{Progress, ProgressReader, Unit};
use hf_hub::{Cache, Repo, RepoType};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where and within which limits files are downloaded.
#[derive(Debug, Clone)]
pub struct HubClient {
    pub endpoint: String,
    pub token: Option<String>,
    /// Largest file accepted.
    pub max_bytes: u64,
    /// Deadline of one file's download, from connect to the last byte.
    pub timeout: Duration,
}

/// Default per-file limits of one kind of download; `OPENLORA_HUB_MAX_BYTES` and
/// `OPENLORA_HUB_TIMEOUT_SECS` override them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub timeout_secs: u64,
}

/// Adapters: 4 GiB and 10 minutes per file.
pub const ADAPTER_LIMITS: Limits = Limits {
    max_bytes: 4 << 30,
    timeout_secs: 600,
};

/// Base models: 256 GiB and 6 hours per file (a shard of an 8B model is ~5 GB, a 70B GGUF ~75 GB).
pub const MODEL_LIMITS: Limits = Limits {
    max_bytes: 256 << 30,
    timeout_secs: 6 * 3600,
};

impl HubClient {
    /// Limits from `OPENLORA_HUB_MAX_BYTES` and `OPENLORA_HUB_TIMEOUT_SECS`, else `defaults`.
    pub fn new(endpoint: &str, token: Option<String>, defaults: Limits) -> Self {
        let var = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        HubClient {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
            max_bytes: var("OPENLORA_HUB_MAX_BYTES").unwrap_or(defaults.max_bytes),
            timeout: Duration::from_secs(
                var("OPENLORA_HUB_TIMEOUT_SECS").unwrap_or(defaults.timeout_secs),
            ),
        }
    }

    /// Downloads `file` of `repo_id` at `rev` into `cache`; returns its snapshot path. `what`
    /// names the download in errors (never a server path).
    pub fn download(
        &self,
        cache: &Cache,
        repo_id: &str,
        rev: &str,
        file: &str,
        what: &str,
    ) -> Result<PathBuf> {
        self.download_optional(cache, repo_id, rev, file, what)?
            .ok_or_else(|| failed(what, "the hub answered 404"))
    }

    /// `download`, but a file the hub does not have (404) is `None`, not an error.
    pub fn download_optional(
        &self,
        cache: &Cache,
        repo_id: &str,
        rev: &str,
        file: &str,
        what: &str,
    ) -> Result<Option<PathBuf>> {
        let deadline = Instant::now() + self.timeout;
        let url = format!(
            "{}/{repo_id}/resolve/{}/{file}",
            self.endpoint,
            rev.replace('/', "%2F")
        );
        // The first answer names the commit and the blob (etag); it may redirect to a CDN.
        let Some(first) = get(&url, self.token.as_deref(), deadline, 0, what)? else {
            return Ok(None);
        };
        let (commit, etag) = identity(&first, what)?;
        let body = if (300..400).contains(&first.status()) {
            let loc = header(&first, "location", what)?;
            let next = match loc.starts_with('/') {
                true => format!("{}{loc}", origin(&self.endpoint)),
                false => loc,
            };
            get(&next, None, deadline, 5, what)?
                .ok_or_else(|| failed(what, "the redirect answered 404"))?
        } else {
            first
        };
        let limit = self.max_bytes;
        let len = body
            .header("content-length")
            .and_then(|l| l.parse::<u64>().ok());
        if len.is_some_and(|n| n > limit) {
            return Err(failed(
                what,
                format!("the file is over the {limit} byte limit"),
            ));
        }
        let progress = Progress::new(format!("downloading {repo_id} {file}"), len, Unit::Bytes);
        let blob = Blob {
            repo_id,
            rev,
            file,
            commit: &commit,
            etag: &etag,
        };
        let mut reader = ProgressReader::new(body.into_reader(), progress);
        let stored = store(cache, &blob, &mut reader, limit).map_err(|e| failed(what, e))?;
        reader.into_progress().finish();
        Ok(Some(stored))
    }
}

/// Where one downloaded file goes in the cache.
struct Blob<'a> {
    repo_id: &'a str,
    rev: &'a str,
    file: &'a str,
    commit: &'a str,
    etag: &'a str,
}

fn failed(what: &str, msg: impl std::fmt::Display) -> Error {
    Error::NotFound(format!("{what}: {msg}"))
}

/// (commit, etag) of a resolve answer.
fn identity(first: &ureq::Response, what: &str) -> Result<(String, String)> {
    let commit = header(first, "x-repo-commit", what)?;
    let etag = first
        .header("x-linked-etag")
        .or_else(|| first.header("etag"))
        .map(|e| e.trim().trim_start_matches("W/").replace('"', ""))
        .filter(|e| !e.is_empty() && !e.contains(['/', '\\']) && e != "." && e != "..")
        .ok_or_else(|| failed(what, "the hub sent no usable etag"))?;
    if commit.len() != 40 || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(failed(what, "the hub sent no commit id"));
    }
    Ok((commit, etag))
}

/// Writes the blob (capped) and links it into the snapshot of `commit`; `rev` then points there.
fn store(cache: &Cache, b: &Blob, body: impl Read, limit: u64) -> std::io::Result<PathBuf> {
    let repo_dir = cache
        .path()
        .join(Repo::new(b.repo_id.into(), RepoType::Model).folder_name());
    let blobs = repo_dir.join("blobs");
    std::fs::create_dir_all(&blobs)?;
    let blob = blobs.join(b.etag);
    let tmp = blobs.join(format!("{}.{}.part", b.etag, std::process::id()));
    let n = write_capped(body, &tmp, limit);
    if !n.as_ref().is_ok_and(|&n| n <= limit) {
        let _ = std::fs::remove_file(&tmp);
        n?;
        return Err(std::io::Error::other(format!(
            "the file is over the {limit} byte limit"
        )));
    }
    std::fs::rename(&tmp, &blob)?;
    let snapshot = repo_dir.join("snapshots").join(b.commit);
    let pointer = snapshot.join(b.file);
    std::fs::create_dir_all(pointer.parent().unwrap_or(&snapshot))?;
    let _ = std::fs::remove_file(&pointer);
    // A file in a subfolder of the repo links one level further up per component.
    let up = "../".repeat(b.file.matches('/').count());
    link(
        &Path::new(&format!("{up}../../blobs")).join(b.etag),
        &blob,
        &pointer,
    )?;
    cache
        .repo(Repo::with_revision(
            b.repo_id.into(),
            RepoType::Model,
            b.rev.into(),
        ))
        .create_ref(b.commit)?;
    Ok(pointer)
}

fn get(
    url: &str,
    token: Option<&str>,
    deadline: Instant,
    redirects: u32,
    what: &str,
) -> Result<Option<ureq::Response>> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(failed(what, "timed out"));
    }
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(left.min(Duration::from_secs(30)))
        .timeout(left)
        .redirects(redirects)
        .build();
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.set("authorization", &format!("Bearer {t}"));
    }
    match req.call() {
        Ok(r) => Ok(Some(r)),
        Err(ureq::Error::Status(404, _)) => Ok(None),
        Err(ureq::Error::Status(code @ (401 | 403), _)) => Err(failed(
            what,
            format!(
                "the hub answered {code} (no such repo, or a private or gated one: set HF_TOKEN)"
            ),
        )),
        Err(ureq::Error::Status(code, _)) => Err(failed(what, format!("the hub answered {code}"))),
        Err(e) => Err(failed(what, e)),
    }
}

fn header(r: &ureq::Response, name: &str, what: &str) -> Result<String> {
    r.header(name)
        .map(str::to_string)
        .ok_or_else(|| failed(what, format!("the hub sent no {name} header")))
}

/// `scheme://host[:port]` of `endpoint`.
fn origin(endpoint: &str) -> &str {
    let after = endpoint.find("://").map_or(0, |i| i + 3);
    match endpoint[after..].find('/') {
        Some(i) => &endpoint[..after + i],
        None => endpoint,
    }
}

/// Copies at most `max + 1` bytes of `r` to a new file at `path`; returns how many.
fn write_capped(r: impl Read, path: &Path, max: u64) -> std::io::Result<u64> {
    let mut f = std::fs::File::create(path)?;
    let n = std::io::copy(&mut r.take(max.saturating_add(1)), &mut f)?;
    f.flush()?;
    f.sync_all()?;
    Ok(n)
}

#[cfg(unix)]
fn link(relative: &Path, _blob: &Path, pointer: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(relative, pointer)
}

#[cfg(not(unix))]
fn link(_relative: &Path, blob: &Path, pointer: &Path) -> std::io::Result<()> {
    std::fs::copy(blob, pointer).map(|_| ())
}
