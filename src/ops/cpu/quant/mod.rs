//! TEMPORARY shim of the quantized-kernel API (replaced by the real module on merge): holds f32.
#![allow(non_camel_case_types, missing_docs)]

use memmap2::Mmap;
use std::ops::Range;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_K,
}

#[derive(Debug, thiserror::Error)]
#[error("shim")]
pub struct QuantError;

impl WeightFormat {
    pub const ALL: [WeightFormat; 5] = [Self::F32, Self::F16, Self::BF16, Self::Q8_0, Self::Q4_K];
    pub const fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
            WeightFormat::BF16 => "bf16",
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::Q4_K => "q4_k",
        }
    }
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name().eq_ignore_ascii_case(name))
    }
    pub fn ggml_dtype(self) -> candle_core::quantized::GgmlDType {
        candle_core::quantized::GgmlDType::F32
    }
    pub fn row_bytes(self, cols: usize) -> usize {
        cols * 4
    }
}

pub struct QStorage(Vec<u8>);
impl QStorage {
    pub fn mapped(map: Arc<Mmap>, range: Range<usize>) -> Self {
        QStorage(map[range].to_vec())
    }
    pub fn copy_from(bytes: &[u8]) -> Self {
        QStorage(bytes.to_vec())
    }
}

pub struct QMatrix {
    format: WeightFormat,
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl QMatrix {
    pub fn from_bytes(format: WeightFormat, rows: usize, cols: usize, s: QStorage) -> Result<Self, QuantError> {
        let dt = match format {
            WeightFormat::F16 => safetensors::Dtype::F16,
            WeightFormat::BF16 => safetensors::Dtype::BF16,
            _ => safetensors::Dtype::F32,
        };
        let data = crate::model::safetensors_file::to_f32(dt, &s.0).unwrap();
        Ok(QMatrix { format, rows, cols, data })
    }
    pub fn quantize(d: &[f32], rows: usize, cols: usize, format: WeightFormat) -> Result<Self, QuantError> {
        Ok(QMatrix { format, rows, cols, data: d.to_vec() })
    }
    pub fn permute_rows(&self, perm: &[usize]) -> Result<Self, QuantError> {
        let mut data = Vec::new();
        for &p in perm {
            data.extend_from_slice(&self.data[p * self.cols..(p + 1) * self.cols]);
        }
        Ok(QMatrix { format: self.format, rows: self.rows, cols: self.cols, data })
    }
    pub fn rows(&self) -> usize { self.rows }
    pub fn cols(&self) -> usize { self.cols }
    pub fn format(&self) -> WeightFormat { self.format }
    pub fn byte_len(&self) -> usize { self.data.len() * 4 }
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        out.copy_from_slice(&self.data[i * self.cols..(i + 1) * self.cols]);
    }
}

pub fn qlinear(x: &[f32], m: usize, w: &QMatrix, bias: Option<&[f32]>, y: &mut [f32]) {
    super::linear(x, m, &w.data, w.rows, w.cols, bias, y)
}
