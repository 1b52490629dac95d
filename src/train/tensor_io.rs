//! Moving values between candle tensors and the rest of openlora: candle errors as `Error`,
//! tensors as f32 vectors or scalars, and named tensors written as safetensors files. Files are
//! written to a temporary name and renamed, so a reader never sees half a file.

use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use std::path::Path;

/// A candle error as openlora's internal error.
pub(crate) fn cerr(e: candle_core::Error) -> Error {
    Error::Internal(format!("training tensor op: {e}"))
}

/// A scalar tensor's value.
pub(crate) fn scalar(t: &Tensor) -> Result<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.to_scalar::<f64>())
        .map_err(cerr)
}

/// A tensor's values as f32, row-major.
pub(crate) fn flat(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .map_err(cerr)
}

/// Writes named f32 tensors as a safetensors file (atomically).
pub(crate) fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut data = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let bytes: Vec<u8> = flat(t)?.iter().flat_map(|x| x.to_le_bytes()).collect();
        data.push((name.clone(), t.dims().to_vec(), bytes));
    }
    let views = data
        .iter()
        .map(|(n, shape, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .map(|v| (n.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes =
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::Internal(e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same folder, then renames it.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
