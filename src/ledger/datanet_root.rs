//! The Merkle root of a datanet's records, as `DatanetRegistry.recordsRoot` commits to it.
//!
//! Encoding (documented in README.md and contracts/README.md; `openlora datanet-root FILE.jsonl`
//! prints it):
//! - records are the non-blank lines of the `.jsonl` file, in file order, numbered from 0;
//! - `contentHash = keccak256(UTF-8 bytes of "text")` for a text record, or
//!   `keccak256(each token id as 4 bytes big-endian, concatenated)` for a `"tokens"` record;
//! - `leaf = keccak256(bytes.concat(keccak256(abi.encode(uint64 index, address contributor,
//!   bytes32 contentHash))))` (the double-hashed leaf of receipts);
//! - the tree is the receipts tree (`chain::merkle`): leaves in record order, sorted-pair keccak
//!   nodes, an odd node carried up; an empty datanet's root is zero.

use crate::chain::MerkleTree;
use crate::error::{Error, Result};
use alloy::primitives::{keccak256, Address, B256};
use serde::Deserialize;
use std::path::Path;

/// One line of a datanet file.
#[derive(Deserialize)]
pub struct RecordLine {
    pub text: Option<String>,
    pub tokens: Option<Vec<u32>>,
    pub contributor: Address,
}

impl RecordLine {
    /// `contentHash` of the record (see the module header).
    pub fn content_hash(&self) -> Option<B256> {
        match (&self.tokens, &self.text) {
            (Some(t), _) => {
                let bytes: Vec<u8> = t.iter().flat_map(|x| x.to_be_bytes()).collect();
                Some(keccak256(bytes))
            }
            (None, Some(t)) => Some(keccak256(t.as_bytes())),
            (None, None) => None,
        }
    }
}

/// The non-blank lines of a datanet file, parsed, with their 1-based line numbers.
pub fn parse_records(text: &str, path: &Path) -> Result<Vec<(usize, RecordLine)>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map(|r| (i + 1, r))
                .map_err(|e| Error::file("datanet", path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// The leaf of record `index`.
pub fn record_leaf(index: u64, contributor: Address, content_hash: B256) -> B256 {
    let mut enc = [0u8; 96];
    enc[24..32].copy_from_slice(&index.to_be_bytes());
    enc[44..64].copy_from_slice(contributor.as_slice());
    enc[64..96].copy_from_slice(content_hash.as_slice());
    keccak256(keccak256(enc))
}

/// The records root of a datanet file's text.
pub fn records_root(text: &str, path: &Path) -> Result<B256> {
    let mut leaves = vec![];
    for (i, (line, r)) in parse_records(text, path)?.into_iter().enumerate() {
        let h = r.content_hash().ok_or_else(|| {
            Error::file(
                "datanet",
                path,
                format!("line {line}: needs `text` or `tokens`"),
            )
        })?;
        leaves.push(record_leaf(i as u64, r.contributor, h));
    }
    Ok(MerkleTree::new(leaves).map_or(B256::ZERO, |t| t.root()))
}

/// The records root of the datanet file at `path`.
pub fn records_root_of_file(path: &Path) -> Result<B256> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    records_root(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::sol_types::SolValue;

    #[test]
    fn leaf_is_the_abi_encoding_double_hashed() {
        let who = Address::repeat_byte(0xC1);
        let h = keccak256(b"hello");
        let enc = (42u64, who, h).abi_encode();
        assert_eq!(record_leaf(42, who, h), keccak256(keccak256(enc)));
    }

    #[test]
    fn root_changes_with_any_record() {
        let p = Path::new("d.jsonl");
        let a = format!(
            "{{\"text\": \"one\", \"contributor\": \"{}\"}}\n\n{{\"tokens\": [1, 2], \"contributor\": \"{}\"}}\n",
            Address::repeat_byte(1),
            Address::repeat_byte(2)
        );
        let root = records_root(&a, p).unwrap();
        let l0 = record_leaf(0, Address::repeat_byte(1), keccak256(b"one"));
        let l1 = record_leaf(
            1,
            Address::repeat_byte(2),
            keccak256([0u8, 0, 0, 1, 0, 0, 0, 2]),
        );
        assert_eq!(root, crate::chain::merkle::hash_pair(l0, l1));
        assert_ne!(records_root(&a.replace("one", "onE"), p).unwrap(), root);
        assert_eq!(records_root("", p).unwrap(), B256::ZERO);
    }
}
