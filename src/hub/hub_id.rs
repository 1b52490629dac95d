//! A Hugging Face hub adapter id, `org/name[@revision]`, checked by the hub's own rules before
//! anything touches the file system or the network. What always holds for a `HubId`:
//! - `repo` is `org/name`: two parts of `[A-Za-z0-9._-]`, no part starting or ending with `-` or
//!   `.`, no `--` or `..`, 96 characters at most (huggingface_hub's `validate_repo_id`);
//! - `revision` is a 40-hex commit, `refs/pr/N`, or a git branch/tag name (git's
//!   `check-ref-format`: no `..`, no leading `/` or `.`-component, no `//`, no `@{`, no control
//!   characters or ` ~^:?*[\`, no `.lock` component end), 255 bytes at most.
//!
//! So neither part can name a path outside the cache's `models--org--name` folder. A file of a
//! repo (`check_file_name`) is a relative path of such parts, so it stays inside its snapshot.

use crate::error::{Error, Result};

/// Longest repo id the hub accepts.
const MAX_REPO_LEN: usize = 96;
/// Longest revision accepted (git allows longer; no real branch needs it).
const MAX_REVISION_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    /// `org/name`.
    pub repo: String,
    /// Branch, tag, commit or `refs/pr/N`; `main` when the id names none.
    pub revision: String,
}

/// True when `s` has the shape of a hub id (`a/b` or `a/b@rev`, one `/` before any `@`), valid
/// or not: such a string is checked as a hub id rather than read as a relative folder.
pub fn looks_like(s: &str) -> bool {
    let repo = s.split_once('@').map_or(s, |(r, _)| r);
    !s.starts_with('/') && !s.starts_with('.') && repo.matches('/').count() == 1
}

fn bad(id: &str, why: &str) -> Error {
    Error::invalid(
        "lora_path",
        format!("`{id}` is not a valid hub id (org/name[@revision]): {why}"),
    )
}

fn check_repo_part(part: &str) -> std::result::Result<(), &'static str> {
    if part.is_empty() {
        return Err("empty organization or name");
    }
    if !part
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err("names use only letters, digits, `-`, `_` and `.`");
    }
    if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
        return Err("a name may not start or end with `-` or `.`");
    }
    if part.contains("--") || part.contains("..") {
        return Err("`--` and `..` are not allowed");
    }
    Ok(())
}

fn check_revision(rev: &str) -> std::result::Result<(), &'static str> {
    if rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    if let Some(n) = rev.strip_prefix("refs/pr/") {
        return match !n.is_empty() && n.len() <= 10 && n.bytes().all(|b| b.is_ascii_digit()) {
            true => Ok(()),
            false => Err("`refs/pr/N` needs a pull request number"),
        };
    }
    if rev.is_empty() || rev.len() > MAX_REVISION_LEN {
        return Err("a revision has 1 to 255 bytes");
    }
    if rev.contains("..") || rev.contains("@{") || rev == "@" {
        return Err("`..` and `@{` are not allowed in a revision");
    }
    if rev
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c))
    {
        return Err("a revision may not contain spaces, control characters or ~^:?*[\\");
    }
    if rev.ends_with(['/', '.']) {
        return Err("a revision may not end with `/` or `.`");
    }
    for comp in rev.split('/') {
        if comp.is_empty() || comp.starts_with('.') || comp.ends_with(".lock") {
            return Err("a revision may not start with `/`, hold `//`, or have a part starting with `.` or ending with `.lock`");
        }
    }
    Ok(())
}

/// Checks a file path inside a hub repo (`model.gguf`, `q4/model-00001-of-00002.safetensors`):
/// `/`-separated parts of `[A-Za-z0-9._-]`, none empty or starting with `.`, 255 bytes at most.
pub fn check_file_name(file: &str) -> Result<()> {
    let bad = |why: &str| {
        Error::invalid(
            "model",
            format!("`{file}` is not a valid file name in a hub repo: {why}"),
        )
    };
    if file.is_empty() || file.len() > 255 {
        return Err(bad("a file name has 1 to 255 bytes"));
    }
    for part in file.split('/') {
        if part.is_empty() || part.starts_with('.') {
            return Err(bad("no empty part and no part starting with `.`"));
        }
        if !part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
        {
            return Err(bad("names use only letters, digits, `-`, `_`, `+` and `.`"));
        }
    }
    Ok(())
}

impl HubId {
    /// Parses and checks `org/name[@revision]`; the error names the rule broken.
    pub fn parse(id: &str) -> Result<HubId> {
        let (repo, rev) = match id.split_once('@') {
            Some((r, v)) => (r, v),
            None => (id, "main"),
        };
        if repo.len() > MAX_REPO_LEN {
            return Err(bad(id, "a repo id has at most 96 characters"));
        }
        let (org, name) = repo
            .split_once('/')
            .ok_or_else(|| bad(id, "expected exactly one `/`"))?;
        if name.contains('/') {
            return Err(bad(id, "expected exactly one `/`"));
        }
        check_repo_part(org).map_err(|w| bad(id, w))?;
        check_repo_part(name).map_err(|w| bad(id, w))?;
        if name.ends_with(".git") {
            return Err(bad(id, "a name may not end with `.git`"));
        }
        check_revision(rev).map_err(|w| bad(id, w))?;
        Ok(HubId {
            repo: repo.to_string(),
            revision: rev.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hub_ids() {
        for (id, repo, rev) in [
            ("org/name", "org/name", "main"),
            (
                "HuggingFaceTB/SmolLM2-135M",
                "HuggingFaceTB/SmolLM2-135M",
                "main",
            ),
            ("a_b/c.d@v1.0", "a_b/c.d", "v1.0"),
            ("o/n@feature/x-y", "o/n", "feature/x-y"),
            ("o/n@refs/pr/12", "o/n", "refs/pr/12"),
            (
                "o/n@0123456789abcdef0123456789abcdef01234567",
                "o/n",
                "0123456789abcdef0123456789abcdef01234567",
            ),
        ] {
            let h = HubId::parse(id).unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!((h.repo.as_str(), h.revision.as_str()), (repo, rev), "{id}");
        }
    }

    #[test]
    fn refuses_traversal_and_bad_names() {
        for id in [
            "evil/repo@../../../../tmp/X",
            "evil/repo@main/../../x",
            "evil/repo@/etc",
            "evil/repo@a//b",
            "evil/repo@.hidden",
            "evil/repo@x.lock",
            "evil/repo@",
            "evil/repo@a b",
            "evil/repo@a\0b",
            "evil/repo@x~1",
            "evil/repo@x@{1}",
            "evil/repo@refs/pr/",
            "evil/repo@refs/pr/1x",
            "../repo",
            "evil/..",
            "evil/.x",
            "evil/x-",
            "-evil/x",
            "ev--il/x",
            "a/b/c",
            "noslash",
            "/abs/path",
            "evil/re po",
            "evil/repo.git",
            "é/x",
        ] {
            assert!(HubId::parse(id).is_err(), "{id} must be refused");
        }
        let long = format!("o/{}", "a".repeat(95));
        assert!(HubId::parse(&long).is_err());
        assert!(HubId::parse(&format!("o/n@{}", "a".repeat(256))).is_err());
    }

    #[test]
    fn file_names_stay_inside_the_repo() {
        for ok in [
            "model.gguf",
            "q4/model-00001-of-00002.safetensors",
            "a_b+c.json",
        ] {
            check_file_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            ".hidden",
            "a/.git/x",
            "a b",
            "a\\b",
        ] {
            assert!(check_file_name(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn shape() {
        assert!(looks_like("evil/repo@../../../../tmp/X"));
        assert!(looks_like("org/name"));
        assert!(!looks_like("/abs/dir"));
        assert!(!looks_like("./rel/dir"));
        assert!(!looks_like("a/b/c"));
        assert!(!looks_like("plain"));
    }
}
