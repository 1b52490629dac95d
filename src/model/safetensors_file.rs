//! A memory-mapped `.safetensors` file with tensors read out as `f32` (from F32, F16 or BF16), or
//! as matrices kept in their 16-bit dtype.

use crate::error::{Error, Result};
use crate::ops::cpu::quant::{QMatrix, QStorage, WeightFormat};
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

impl SafetensorsFile {
    /// A 2-D tensor in its own dtype (F32, F16 or BF16), bytes copied out of the map.
    pub fn matrix(&self, name: &str) -> Result<QMatrix> {
        let st = self.parsed()?;
        let bad = |m: String| Error::file("safetensors", &self.path, format!("`{name}`: {m}"));
        let t = st.tensor(name).map_err(|e| bad(e.to_string()))?;
        let format = match t.dtype() {
            Dtype::F32 => WeightFormat::F32,
            Dtype::F16 => WeightFormat::F16,
            Dtype::BF16 => WeightFormat::BF16,
            other => return Err(bad(format!("unsupported dtype {other:?}"))),
        };
        let &[rows, cols] = t.shape() else {
            return Err(bad(format!(
                "expected a matrix, found shape {:?}",
                t.shape()
            )));
        };
        QMatrix::from_bytes(format, rows, cols, QStorage::copy_from(t.data()))
            .map_err(|e| bad(e.to_string()))
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
