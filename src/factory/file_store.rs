//! Uploaded files' contents: `<data dir>/files/<file id>.jsonl`, written under a temporary name
//! and renamed, so a file is whole or absent; names come from our ids (`FileId`), never from the
//! client. `check_training_text` is the upload's one validation: UTF-8, OpenAI's chat format line
//! by line (a bad line is a 400 naming it and the problem) and, where a line names its
//! `contributor` (the datanet extension), a valid address.

use super::ids::FileId;
use crate::error::{Error, Result};
use crate::train::parse_jsonl;
use crate::train::tensor_io::write_atomic;
use std::path::PathBuf;

pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    pub fn open(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(FileStore { dir })
    }

    fn path(&self, id: &FileId) -> PathBuf {
        self.dir.join(format!("{}.jsonl", id.as_str()))
    }

    pub fn save(&self, id: &FileId, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.path(id), bytes)
    }

    pub fn read(&self, id: &FileId) -> Result<Vec<u8>> {
        let p = self.path(id);
        std::fs::read(&p).map_err(|e| Error::io(&p, e))
    }

    pub fn read_text(&self, id: &FileId) -> Result<String> {
        String::from_utf8(self.read(id)?).map_err(|_| Error::Internal(format!("{id} is not UTF-8")))
    }

    pub fn remove(&self, id: &FileId) {
        let _ = std::fs::remove_file(self.path(id));
    }
}

/// The contributor a training line names (`"contributor": "0x..."`), if any.
pub fn contributor_of(
    line: &str,
) -> std::result::Result<Option<alloy::primitives::Address>, String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not valid JSON ({e})"))?;
    match v.get("contributor") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(c) => c
            .as_str()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| "`contributor` must be a 0x address".to_string()),
    }
}

/// Checks an upload for `purpose: fine-tune`; returns how many examples it holds.
pub fn check_training_text(bytes: &[u8]) -> Result<usize> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        Error::invalid("file", format!("line {line}: not UTF-8 text"))
    })?;
    let records = parse_jsonl(text, "file")?;
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        contributor_of(line).map_err(|m| Error::invalid("file", format!("line {}: {m}", i + 1)))?;
    }
    Ok(records.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_checked_line_by_line() {
        let good = r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "contributor": "0x00000000000000000000000000000000000000aa"}"#;
        assert_eq!(
            check_training_text(format!("{good}\n\n{good}\n").as_bytes()).unwrap(),
            2
        );
        let bad_who = good.replace("0x00000000000000000000000000000000000000aa", "bob");
        let e = check_training_text(format!("{good}\n{bad_who}\n").as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("contributor"), "{e}");
        let e = check_training_text(b"{\"messages\": []}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("empty"), "{e}");
        let mut bytes = format!("{good}\n").into_bytes();
        bytes.extend_from_slice(b"\xff\xfe\n");
        let e = check_training_text(&bytes).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("UTF-8"), "{e}");
    }
}
