//! Where an adapter loaded at runtime (`/v1/load_lora_adapter`) may come from. What always holds:
//! - a `lora_path` shaped like a hub id (`org/name[@rev]`) is checked by the hub's rules
//!   (`HubId::parse`) before any file system or network access;
//! - a local path is first normalized lexically (`.`/`..` folded, relative to the working folder)
//!   and refused without touching the file system unless it lies under an allowed root; only then is
//!   it canonicalized, and refused again if a symlink led it out of every root;
//! - the folder's `adapter_config.json` and `adapter_model.safetensors` must resolve inside the
//!   roots too, be regular files (no FIFOs, devices or folders) and stay under the size caps;
//! - every error names the adapter, never a server path (`Error::InvalidAdapter`).

use super::{CONFIG_FILE, WEIGHTS_FILE};
use crate::error::{Error, Result};
use crate::hub::hub_id::{self, HubId};
use std::path::{Component, Path, PathBuf};

/// Largest `adapter_config.json` read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest `adapter_model.safetensors` accepted (a rank-256 adapter of an 8B model is ~1.3 GiB).
pub const MAX_WEIGHTS_BYTES: u64 = 8 << 30;

/// The folders runtime-loaded adapters must live under (`--adapter-roots`).
#[derive(Debug, Clone, Default)]
pub struct AdapterRoots {
    /// Absolute and lexically normalized.
    roots: Vec<PathBuf>,
}

/// `path` made absolute (against the working folder) with `.` and `..` folded, no file system
/// access (a `..` above `/` stays at `/`).
pub fn normalize(path: &Path) -> PathBuf {
    let abs = match path.is_absolute() {
        true => path.to_path_buf(),
        false => std::env::current_dir().unwrap_or_default().join(path),
    };
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn adapter_err(name: &str, message: impl Into<String>) -> Error {
    Error::InvalidAdapter {
        name: name.to_string(),
        message: message.into(),
    }
}

impl AdapterRoots {
    pub fn new(roots: impl IntoIterator<Item = PathBuf>) -> Self {
        AdapterRoots {
            roots: roots.into_iter().map(|r| normalize(&r)).collect(),
        }
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    fn lexically_inside(&self, p: &Path) -> bool {
        self.roots.iter().any(|r| p.starts_with(r))
    }

    /// True when `p`, already canonical, lies under the canonical form of a root.
    fn canonically_inside(&self, p: &Path) -> bool {
        self.roots
            .iter()
            .map(|r| std::fs::canonicalize(r).unwrap_or_else(|_| r.clone()))
            .any(|r| p.starts_with(r))
    }

    /// The canonical adapter folder of a local `path`, confined to the roots (see the header).
    pub fn confine(&self, name: &str, path: &Path) -> Result<PathBuf> {
        let outside = || {
            adapter_err(
                name,
                "lora_path is outside the allowed adapter roots (--adapter-roots)",
            )
        };
        let lexical = normalize(path);
        if !self.lexically_inside(&lexical) {
            return Err(outside());
        }
        let dir = std::fs::canonicalize(&lexical)
            .map_err(|_| adapter_err(name, "no adapter folder at lora_path"))?;
        if !self.canonically_inside(&dir) {
            return Err(outside());
        }
        if !dir.is_dir() {
            return Err(adapter_err(name, "lora_path is not a folder"));
        }
        for (file, cap) in [
            (CONFIG_FILE, MAX_CONFIG_BYTES),
            (WEIGHTS_FILE, MAX_WEIGHTS_BYTES),
        ] {
            self.check_file(name, &dir.join(file), file, cap)?;
        }
        Ok(dir)
    }

    fn check_file(&self, name: &str, path: &Path, file: &str, cap: u64) -> Result<()> {
        let real = std::fs::canonicalize(path)
            .map_err(|_| adapter_err(name, format!("{file} is missing")))?;
        if !self.canonically_inside(&real) {
            return Err(adapter_err(
                name,
                format!("{file} links outside the allowed adapter roots"),
            ));
        }
        let meta = std::fs::metadata(&real)
            .map_err(|_| adapter_err(name, format!("{file} cannot be read")))?;
        if !meta.is_file() {
            return Err(adapter_err(name, format!("{file} is not a regular file")));
        }
        if meta.len() > cap {
            return Err(adapter_err(
                name,
                format!("{file} is larger than {cap} bytes"),
            ));
        }
        Ok(())
    }

    /// Resolves an admin request's `lora_path`: a folder under the roots, or a hub id fetched into
    /// the hub cache (which must itself be under a root).
    pub fn resolve(&self, name: &str, lora_path: &str) -> Result<PathBuf> {
        if lora_path.is_empty() || lora_path.contains('\0') || lora_path.len() > 4096 {
            return Err(Error::invalid("lora_path", "must be a folder or a hub id"));
        }
        if !hub_id::looks_like(lora_path) {
            return self.confine(name, Path::new(lora_path));
        }
        let id = HubId::parse(lora_path)?;
        // A valid hub id may still name a relative folder under a root (`adapters/foo`).
        let local = normalize(Path::new(lora_path));
        if self.lexically_inside(&local) && local.is_dir() {
            return self.confine(name, &local);
        }
        let cache = super::hub::cache_from_env();
        if !self.lexically_inside(&normalize(cache.path())) {
            return Err(adapter_err(
                name,
                "hub adapters are not allowed: the hub cache is not an adapter root",
            ));
        }
        let dir = super::hub::fetch_id(&cache, &super::hub::endpoint_from_env(), &id)?;
        self.confine(name, &dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "openlora-roots-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn adapter(dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(CONFIG_FILE), "{}").unwrap();
        std::fs::write(dir.join(WEIGHTS_FILE), "x").unwrap();
        dir.to_path_buf()
    }

    fn msg(r: Result<PathBuf>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn normalize_folds_dots_lexically() {
        assert_eq!(
            normalize(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(normalize(Path::new("/a/../../..")), PathBuf::from("/"));
        assert!(normalize(Path::new("rel")).is_absolute());
    }

    #[test]
    fn confines_to_roots_and_refuses_symlink_escape() {
        let base = scratch("confine");
        let root = base.join("root");
        let outside = base.join("outside");
        let good = adapter(&root.join("good"));
        let away = adapter(&outside.join("away"));
        let roots = AdapterRoots::new([root.clone()]);
        assert_eq!(
            roots.confine("a", &good).unwrap(),
            std::fs::canonicalize(&good).unwrap()
        );
        // Lexically outside: refused, and the message names no path.
        for p in [
            away.clone(),
            root.join("../outside/away"),
            PathBuf::from("/etc"),
        ] {
            let m = msg(roots.confine("a", &p));
            assert!(m.contains("outside the allowed adapter roots"), "{m}");
            assert!(
                !m.contains(&*base.to_string_lossy()) && !m.contains("/etc"),
                "{m}"
            );
        }
        // A symlink in the root that points out of it.
        std::os::unix::fs::symlink(&away, root.join("link")).unwrap();
        let m = msg(roots.confine("a", &root.join("link")));
        assert!(m.contains("outside the allowed adapter roots"), "{m}");
        // A file symlinked out of the root.
        let sneaky = root.join("sneaky");
        std::fs::create_dir_all(&sneaky).unwrap();
        std::fs::write(sneaky.join(CONFIG_FILE), "{}").unwrap();
        std::os::unix::fs::symlink(away.join(WEIGHTS_FILE), sneaky.join(WEIGHTS_FILE)).unwrap();
        let m = msg(roots.confine("a", &sneaky));
        assert!(m.contains("links outside"), "{m}");
        // Missing files and non-regular files.
        let m = msg(roots.confine("a", &root.join("nope")));
        assert!(m.contains("no adapter folder"), "{m}");
        let dirfile = root.join("dirfile");
        std::fs::create_dir_all(dirfile.join(CONFIG_FILE)).unwrap();
        std::fs::write(dirfile.join(WEIGHTS_FILE), "x").unwrap();
        let m = msg(roots.confine("a", &dirfile));
        assert!(m.contains("not a regular file"), "{m}");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn sizes_are_capped() {
        let base = scratch("cap");
        let dir = adapter(&base.join("a"));
        let roots = AdapterRoots::new([base.clone()]);
        let f = dir.join(CONFIG_FILE);
        assert!(roots.check_file("a", &f, CONFIG_FILE, 2).is_ok());
        let m = roots
            .check_file("a", &f, CONFIG_FILE, 1)
            .unwrap_err()
            .to_string();
        assert!(m.contains("larger than 1 bytes"), "{m}");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn hub_traversal_is_refused_before_touching_anything() {
        let base = scratch("hubtrav");
        let roots = AdapterRoots::new([base.clone()]);
        let m = msg(roots.resolve("x", "evil/repo@../../../../tmp/X"));
        assert!(m.contains("not a valid hub id"), "{m}");
        let _ = std::fs::remove_dir_all(&base);
    }
}
