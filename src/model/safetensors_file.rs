//! A memory-mapped `.safetensors` file with tensors read out as `f32` (from F32, F16 or BF16).

use crate::error::{Error, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is opened read-only and we never hand out references that outlive
        // `self`; a concurrent truncation by another process is outside what we guard against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let sf = SafetensorsFile {
            path: path.to_path_buf(),
            mmap,
        };
        sf.parsed()?;
        Ok(sf)
    }

    fn parsed(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.mmap).map_err(|e| Error::file("safetensors", &self.path, e))
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .parsed()
            .map(|s| s.names().into_iter().map(String::from).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn contains(&self, name: &str) -> bool {
        self.parsed().is_ok_and(|s| s.tensor(name).is_ok())
    }

    /// The tensor as f32 with its shape.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let st = self.parsed()?;
        let t = st
            .tensor(name)
            .map_err(|e| Error::file("safetensors", &self.path, format!("`{name}`: {e}")))?;
        let data = to_f32(t.dtype(), t.data()).ok_or_else(|| {
            Error::file(
                "safetensors",
                &self.path,
                format!("`{name}` has unsupported dtype {:?}", t.dtype()),
            )
        })?;
        Ok((data, t.shape().to_vec()))
    }
}

/// Little-endian tensor bytes as f32 (F32, F16, BF16); `None` for other dtypes.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}
