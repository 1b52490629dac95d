//! A weight matrix `[rows = out features, cols = in features]` kept in one [`WeightFormat`]: row
//! `i` is `row_bytes()` bytes of ggml blocks at `i * row_bytes()`, exactly as in a GGUF file, or,
//! once [`QMatrix::packed`], the same bytes in the CPU kernels' layout of groups of 8 rows
//! (`super::packed`; `Q4_0`, `Q4_1`, `Q8_0`). A `QMatrix` is immutable; its byte length always
//! matches its shape, format and layout, and [`QMatrix::row`] gives ggml's bytes in either layout.

use super::act_precision::ActPrecision;
use super::blocks;
use super::format::{QuantError, WeightFormat};
use super::packed;
use super::storage::QStorage;
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;
use std::borrow::Cow;

/// Rows per chunk when quantizing in parallel.
const QUANTIZE_ROWS: usize = 64;

#[derive(Clone, Debug)]
pub struct QMatrix {
    format: WeightFormat,
    rows: usize,
    cols: usize,
    storage: QStorage,
    /// Whether `storage` is in the packed layout.
    packed: bool,
    /// How activations are rounded for this matrix's integer kernels (block formats only).
    act: ActPrecision,
}

impl QMatrix {
    /// Wraps `storage` (a GGUF tensor's bytes, mapped or owned) as a `[rows, cols]` matrix.
    pub fn from_bytes(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        storage: QStorage,
    ) -> Result<Self, QuantError> {
        check_cols(format, cols)?;
        let expected = rows * format.row_bytes(cols);
        if storage.len() != expected {
            let actual = storage.len();
            return Err(QuantError::ByteLength {
                format,
                rows,
                cols,
                expected,
                actual,
            });
        }
        Ok(Self {
            format,
            rows,
            cols,
            storage,
            packed: false,
            act: ActPrecision::default(),
        })
    }

    /// An `F16` matrix from raw half-precision bits (safetensors' F16).
    pub fn from_f16(bits: &[u16], rows: usize, cols: usize) -> Result<Self, QuantError> {
        Self::from_u16(WeightFormat::F16, bits, rows, cols)
    }

    /// A `BF16` matrix from raw bfloat16 bits (safetensors' BF16).
    pub fn from_bf16(bits: &[u16], rows: usize, cols: usize) -> Result<Self, QuantError> {
        Self::from_u16(WeightFormat::BF16, bits, rows, cols)
    }

    fn from_u16(
        f: WeightFormat,
        bits: &[u16],
        rows: usize,
        cols: usize,
    ) -> Result<Self, QuantError> {
        let storage = QStorage::build(bits.len() * 2, |dst| {
            for (d, b) in dst.chunks_exact_mut(2).zip(bits) {
                d.copy_from_slice(&b.to_le_bytes());
            }
        });
        Self::from_bytes(f, rows, cols, storage)
    }

    /// Quantizes (or converts) row-major f32 `data` to `target`: the float formats by rounding,
    /// the block formats with ggml's reference quantizers (through candle), rows in parallel.
    pub fn quantize(
        data: &[f32],
        rows: usize,
        cols: usize,
        target: WeightFormat,
    ) -> Result<Self, QuantError> {
        check_cols(target, cols)?;
        assert_eq!(
            data.len(),
            rows * cols,
            "quantize: data is not [rows, cols]"
        );
        let rb = target.row_bytes(cols);
        let mut failure = None;
        let storage = QStorage::build(rows * rb, |dst| {
            let chunks = dst.par_chunks_mut(QUANTIZE_ROWS * rb.max(1));
            let results: Vec<_> = chunks
                .zip(data.par_chunks(QUANTIZE_ROWS * cols.max(1)))
                .map(|(out, src)| encode(target, src, cols, out))
                .collect();
            failure = results.into_iter().find_map(Result::err);
        });
        match failure {
            Some(e) => Err(e),
            None => Self::from_bytes(target, rows, cols, storage),
        }
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// The same matrix, its products computed with activations rounded to `act`.
    pub fn with_act_precision(self, act: ActPrecision) -> Self {
        Self { act, ..self }
    }

    pub fn act_precision(&self) -> ActPrecision {
        self.act
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn storage(&self) -> &QStorage {
        &self.storage
    }

    /// The matrix in the CPU kernels' packed layout where its format has one (an owned copy;
    /// the same matrix otherwise). Products are the same bits either way.
    pub fn packed(self) -> Self {
        if self.packed || !packed::packable(self.format) {
            return self;
        }
        let (f, rows, cols) = (self.format, self.rows, self.cols);
        let storage = QStorage::build(packed::packed_len(f, rows, cols), |dst| {
            packed::pack(f, rows, cols, self.as_bytes(), dst)
        });
        self.storage.release_pages();
        Self {
            storage,
            packed: true,
            ..self
        }
    }

    /// Whether the bytes are in the packed layout.
    pub fn is_packed(&self) -> bool {
        self.packed
    }

    /// All bytes as stored (ggml rows, or the packed layout when [`Self::is_packed`]).
    pub fn as_bytes(&self) -> &[u8] {
        self.storage.as_bytes()
    }

    /// Bytes held (for memory accounting; mapped bytes are file-backed and shared).
    pub fn byte_len(&self) -> usize {
        self.storage.len()
    }

    /// Bytes per row in ggml's layout.
    pub fn row_bytes(&self) -> usize {
        self.format.row_bytes(self.cols)
    }

    /// ggml's bytes of row `i` (borrowed, or gathered from the packed layout).
    pub fn row(&self, i: usize) -> Cow<'_, [u8]> {
        let rb = self.row_bytes();
        match self.packed {
            false => Cow::Borrowed(&self.as_bytes()[i * rb..(i + 1) * rb]),
            true => {
                let mut out = vec![0u8; rb];
                packed::unpack_row(self.format, self.cols, self.as_bytes(), i, &mut out);
                Cow::Owned(out)
            }
        }
    }

    /// An owned copy whose row `i` is row `perm[i]` of `self` (whole quantized rows move, so this
    /// works in every format — e.g. undoing llama.cpp's q/k head permutation).
    pub fn permute_rows(&self, perm: &[usize]) -> Result<Self, QuantError> {
        let bad = QuantError::BadPermutation {
            perm: perm.len(),
            rows: self.rows,
        };
        let mut seen = vec![false; self.rows];
        for &p in perm {
            if p >= self.rows || std::mem::replace(&mut seen[p], true) {
                return Err(bad);
            }
        }
        if perm.len() != self.rows {
            return Err(bad);
        }
        let rb = self.row_bytes();
        let storage = QStorage::build(self.rows * rb, |dst| {
            for (d, &p) in dst.chunks_exact_mut(rb.max(1)).zip(perm) {
                d.copy_from_slice(&self.row(p));
            }
        });
        let q = Self::from_bytes(self.format, self.rows, self.cols, storage)?
            .with_act_precision(self.act);
        Ok(if self.packed { q.packed() } else { q })
    }

    /// Writes row `i` as f32 into `out` (`cols` values): an embedding lookup.
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols, "dequantize_row: out is not one row");
        blocks::dequantize(self.format, &self.row(i), out);
    }

    /// The whole matrix as row-major f32.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        if self.cols > 0 {
            out.par_chunks_mut(self.cols)
                .enumerate()
                .for_each(|(i, o)| self.dequantize_row(i, o));
        }
        out
    }
}

/// Rows of `format` must be whole blocks.
fn check_cols(format: WeightFormat, cols: usize) -> Result<(), QuantError> {
    let block = format.block_len();
    match cols.is_multiple_of(block) {
        true => Ok(()),
        false => Err(QuantError::RaggedRow {
            format,
            cols,
            block,
        }),
    }
}

/// Encodes whole rows `src` (`cols` values each) of f32 into `out` in format `f`.
fn encode(f: WeightFormat, src: &[f32], cols: usize, out: &mut [u8]) -> Result<(), QuantError> {
    let put = |out: &mut [u8], bytes: &mut dyn Iterator<Item = [u8; 2]>| {
        for (o, b) in out.chunks_exact_mut(2).zip(bytes) {
            o.copy_from_slice(&b);
        }
    };
    match f {
        WeightFormat::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        WeightFormat::F16 => put(
            out,
            &mut src.iter().map(|&v| f16::from_f32(v).to_le_bytes()),
        ),
        WeightFormat::BF16 => put(
            out,
            &mut src.iter().map(|&v| bf16::from_f32(v).to_le_bytes()),
        ),
        _ => {
            let candle = |e: candle_core::Error| QuantError::Candle(e.to_string());
            let t =
                Tensor::from_slice(src, (src.len() / cols, cols), &Device::Cpu).map_err(candle)?;
            let q = QTensor::quantize(&t, f.ggml_dtype()).map_err(candle)?;
            out.copy_from_slice(&q.data().map_err(candle)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cpu::quant::qlinear::tests::{bits_eq, data, rng};
    use candle_core::quantized::ggml_file::qtensor_from_ggml;
    use rand::Rng;

    /// Offsets of the f16 scale fields in a block of `f` (everything else may be any bits).
    fn scale_fields(f: WeightFormat) -> &'static [usize] {
        match f {
            WeightFormat::Q4_0 | WeightFormat::Q5_0 | WeightFormat::Q8_0 => &[0],
            WeightFormat::Q4_1 | WeightFormat::Q5_1 | WeightFormat::Q4_K | WeightFormat::Q5_K => {
                &[0, 2]
            }
            WeightFormat::Q6_K => &[208],
            _ => &[],
        }
    }

    /// Random bytes for every field, with finite random scales.
    fn random_blocks(rng: &mut impl Rng, f: WeightFormat, rows: usize, cols: usize) -> QMatrix {
        let mut bytes: Vec<u8> = (0..rows * f.row_bytes(cols))
            .map(|_| rng.random())
            .collect();
        for block in bytes.chunks_exact_mut(f.block_bytes()) {
            for &at in scale_fields(f) {
                let v = f16::from_f32(rng.random_range(-0.1f32..0.1));
                block[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        if f.is_float() {
            let v: Vec<f32> = (0..rows * cols)
                .map(|_| rng.random_range(-3f32..3.0))
                .collect();
            return QMatrix::quantize(&v, rows, cols, f).unwrap();
        }
        QMatrix::from_bytes(f, rows, cols, QStorage::copy_from(&bytes)).unwrap()
    }

    fn candle_f32(w: &QMatrix) -> Vec<f32> {
        let dims = vec![w.rows(), w.cols()];
        let q =
            qtensor_from_ggml(w.format().ggml_dtype(), w.as_bytes(), dims, &Device::Cpu).unwrap();
        q.dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn dequantize_matches_candle_to_float_bit_for_bit() {
        let (mut rng, seed) = rng();
        for f in WeightFormat::ALL {
            let (rows, cols) = (3, f.block_len().max(32) * 2);
            let quantized = QMatrix::quantize(&data(&mut rng, rows * cols), rows, cols, f).unwrap();
            for w in [quantized, random_blocks(&mut rng, f, rows, cols)] {
                let ours = w.to_f32();
                assert!(bits_eq(&ours, &candle_f32(&w)), "{f} (seed {seed})");
                let mut row = vec![0f32; cols];
                w.dequantize_row(2, &mut row);
                assert!(bits_eq(&row, &ours[2 * cols..]), "{f} row 2 (seed {seed})");
            }
        }
    }

    #[test]
    fn quantize_round_trips_within_the_format_error() {
        let (mut rng, seed) = rng();
        for f in WeightFormat::ALL {
            let (rows, cols) = (4, 512);
            let v = data(&mut rng, rows * cols);
            let back = QMatrix::quantize(&v, rows, cols, f).unwrap().to_f32();
            // Worst-case error relative to the largest magnitude of the block (k-quants share
            // their scales' scale over 256 values, so a quiet 32-value group gets a coarse step).
            let tol = match f {
                WeightFormat::F32 => 0.0,
                WeightFormat::F16 => 1e-3,
                WeightFormat::BF16 => 8e-3,
                // amax/254 rounding plus the f16 rounding of the scale.
                WeightFormat::Q8_0 => 1.0 / 200.0,
                WeightFormat::Q6_K => 0.04,
                WeightFormat::Q5_0 | WeightFormat::Q5_1 | WeightFormat::Q5_K => 0.07,
                _ => 0.15,
            };
            let bl = f.block_len().max(32);
            for (g, (a, b)) in v.chunks(bl).zip(back.chunks(bl)).enumerate() {
                let amax = a.iter().fold(0f32, |m, x| m.max(x.abs()));
                for (x, y) in a.iter().zip(b) {
                    assert!(
                        (x - y).abs() <= tol * amax + 1e-7,
                        "{f} block {g}: {x} -> {y} (seed {seed})"
                    );
                }
            }
        }
    }

    #[test]
    fn from_bytes_checks_the_shape() {
        let f = WeightFormat::Q4_0;
        let err = QMatrix::from_bytes(f, 2, 48, QStorage::copy_from(&[0; 54])).unwrap_err();
        assert_eq!(
            err,
            QuantError::RaggedRow {
                format: f,
                cols: 48,
                block: 32
            }
        );
        assert!(err.to_string().contains("32-value blocks"), "{err}");
        let err = QMatrix::from_bytes(f, 2, 64, QStorage::copy_from(&[0; 71])).unwrap_err();
        assert!(
            matches!(
                err,
                QuantError::ByteLength {
                    expected: 72,
                    actual: 71,
                    ..
                }
            ),
            "{err}"
        );
        assert!(QMatrix::quantize(&[0.0; 48], 1, 48, WeightFormat::Q4_K).is_err());
        assert!(QMatrix::from_bytes(f, 2, 64, QStorage::copy_from(&[0; 72])).is_ok());
    }

    #[test]
    fn permute_rows_moves_whole_quantized_rows() {
        let (mut rng, seed) = rng();
        for f in [WeightFormat::Q4_K, WeightFormat::Q4_1, WeightFormat::BF16] {
            let w = random_blocks(&mut rng, f, 5, 256);
            let perm = [3, 0, 4, 1, 2];
            let p = w.permute_rows(&perm).unwrap();
            // The packed layout permutes the same rows and reads back the same bytes and values.
            let pp = w.clone().packed().permute_rows(&perm).unwrap();
            assert_eq!(pp.is_packed(), f != WeightFormat::BF16);
            for (i, &src) in perm.iter().enumerate() {
                assert_eq!(p.row(i), w.row(src), "{f} (seed {seed})");
                assert_eq!(pp.row(i), w.row(src), "{f} packed (seed {seed})");
            }
            assert!(bits_eq(&pp.to_f32(), &p.to_f32()), "{f} (seed {seed})");
            assert!(w.permute_rows(&[0, 1, 2, 3]).is_err());
            assert!(w.permute_rows(&[0, 1, 2, 3, 3]).is_err());
            assert!(w.permute_rows(&[0, 1, 2, 3, 5]).is_err());
        }
    }

    #[test]
    fn mapped_and_owned_storage_are_the_same_matrix() {
        let (mut rng, _) = rng();
        let w = random_blocks(&mut rng, WeightFormat::Q8_0, 3, 64);
        let path = std::env::temp_dir().join(format!("openlora-qmatrix-{}", std::process::id()));
        let mut file = w.as_bytes().to_vec();
        file.splice(0..0, [7u8; 32]);
        std::fs::write(&path, &file).unwrap();
        let map = std::fs::File::open(&path).and_then(|f| {
            // SAFETY: the file is private to this test and not modified while mapped.
            unsafe { memmap2::Mmap::map(&f) }
        });
        std::fs::remove_file(&path).unwrap();
        let map = std::sync::Arc::new(map.unwrap());
        let storage = QStorage::mapped(map, 32..32 + w.byte_len());
        let mapped = QMatrix::from_bytes(WeightFormat::Q8_0, 3, 64, storage).unwrap();
        assert!(mapped.storage().is_mapped());
        assert_eq!(mapped.to_f32(), w.to_f32());
        assert_eq!(mapped.byte_len(), 3 * 2 * 34);
    }
}
