//! The storage formats a weight matrix can have, as ggml/GGUF defines them: every format packs
//! `block_len()` consecutive values of a row into `block_bytes()` bytes, and a row is a whole
//! number of blocks. Type ids are ggml's (`ggml_type`), so GGUF tensor infos map one to one.

use candle_core::quantized::GgmlDType;
use std::fmt;

/// One weight storage format. Float formats have a block of one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum WeightFormat {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
}

/// Values per k-quant super-block.
pub const QK_K: usize = 256;

/// Why a matrix cannot be built from the given bytes or shape.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("{format}: a row of {cols} values is not a whole number of {block}-value blocks")]
    RaggedRow {
        format: WeightFormat,
        cols: usize,
        block: usize,
    },
    #[error("{format} [{rows}, {cols}] needs {expected} bytes, got {actual}")]
    ByteLength {
        format: WeightFormat,
        rows: usize,
        cols: usize,
        expected: usize,
        actual: usize,
    },
    #[error("quantization failed: {0}")]
    Candle(String),
    #[error("ggml type {0} is not supported")]
    UnsupportedGgmlType(String),
    #[error("row permutation of length {perm} for a matrix of {rows} rows is not a permutation")]
    BadPermutation { perm: usize, rows: usize },
}

impl WeightFormat {
    /// Every format, in ggml type-id order.
    pub const ALL: [WeightFormat; 11] = [
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
        Self::BF16,
    ];

    /// Values per block.
    pub const fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q4_K | Self::Q5_K | Self::Q6_K => QK_K,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
        }
    }

    /// Bytes of one row of `cols` values (`cols` a multiple of the block length).
    pub const fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_len() * self.block_bytes()
    }

    /// ggml's `ggml_type` id, as stored in GGUF tensor infos.
    pub const fn ggml_type_id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
            Self::BF16 => 30,
        }
    }

    /// The format with ggml type id `id`, if it is one of ours.
    pub fn from_ggml_type_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.ggml_type_id() == id)
    }

    /// The ggml name (`q4_k`, `bf16`, ...), also accepted by [`WeightFormat::from_name`].
    pub const fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Q8_0 => "q8_0",
            Self::Q4_K => "q4_k",
            Self::Q5_K => "q5_k",
            Self::Q6_K => "q6_k",
        }
    }

    /// Parses a ggml name, case-insensitively (`Q4_K`, `q8_0`, `bf16`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// Whether values are stored as floats (one value per block) rather than quantized blocks.
    pub const fn is_float(self) -> bool {
        self.block_len() == 1
    }

    /// candle's name for the format.
    pub fn ggml_dtype(self) -> GgmlDType {
        match self {
            WeightFormat::F32 => GgmlDType::F32,
            WeightFormat::F16 => GgmlDType::F16,
            WeightFormat::BF16 => GgmlDType::BF16,
            WeightFormat::Q4_0 => GgmlDType::Q4_0,
            WeightFormat::Q4_1 => GgmlDType::Q4_1,
            WeightFormat::Q5_0 => GgmlDType::Q5_0,
            WeightFormat::Q5_1 => GgmlDType::Q5_1,
            WeightFormat::Q8_0 => GgmlDType::Q8_0,
            WeightFormat::Q4_K => GgmlDType::Q4K,
            WeightFormat::Q5_K => GgmlDType::Q5K,
            WeightFormat::Q6_K => GgmlDType::Q6K,
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<GgmlDType> for WeightFormat {
    type Error = QuantError;

    fn try_from(d: GgmlDType) -> Result<Self, QuantError> {
        Self::ALL
            .into_iter()
            .find(|f| f.ggml_dtype() == d)
            .ok_or_else(|| QuantError::UnsupportedGgmlType(format!("{d:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ids_agree_with_candle() {
        for f in WeightFormat::ALL {
            assert_eq!(WeightFormat::from_ggml_type_id(f.ggml_type_id()), Some(f));
            assert_eq!(WeightFormat::from_name(&f.name().to_uppercase()), Some(f));
            let d = f.ggml_dtype();
            assert_eq!(WeightFormat::try_from(d), Ok(f));
            assert_eq!(d.block_size(), f.block_len(), "{f}");
            assert_eq!(d.type_size(), f.block_bytes(), "{f}");
        }
        assert!(WeightFormat::try_from(GgmlDType::Q8K).is_err());
    }
}
