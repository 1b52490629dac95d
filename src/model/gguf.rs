//! GGUF (llama.cpp) models: metadata -> `ModelConfig`; tensors either in their stored format
//! (`get_native`: the quant blocks stay in the memory-mapped file) or dequantized to dense f32
//! (`get`, the reference path), both in the HF layout. llama.cpp stores q/k rows of the llama
//! architecture permuted for its interleaved rope; they are un-permuted here (whole rows move, so
//! this works on quantized rows too) so that HF-trained LoRA adapters line up with the base weights.

use super::config::Arch;
use super::weights::{TensorName, TensorSource};
use super::ModelConfig;
use super::Proj;
use crate::error::{Error, Result};
use crate::ops::cpu::quant::{QMatrix, QStorage, WeightFormat};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::Device;
use memmap2::Mmap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct GgufFile {
    path: PathBuf,
    reader: BufReader<File>,
    /// The whole file, mapped read-only: native tensors borrow their blocks from it.
    mmap: Arc<Mmap>,
    pub content: Content,
    arch: Option<Arch>,
    heads: usize,
    kv_heads: usize,
}

fn num(v: &Value) -> Option<f64> {
    Some(match v {
        Value::U8(x) => *x as f64,
        Value::I8(x) => *x as f64,
        Value::U16(x) => *x as f64,
        Value::I16(x) => *x as f64,
        Value::U32(x) => *x as f64,
        Value::I32(x) => *x as f64,
        Value::U64(x) => *x as f64,
        Value::I64(x) => *x as f64,
        Value::F32(x) => *x as f64,
        Value::F64(x) => *x,
        Value::Bool(b) => *b as u8 as f64,
        _ => return None,
    })
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: a read-only map of a model file; the server never writes it, and every tensor
        // range is bounds-checked against the map's length before use.
        let mmap = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?);
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| Error::file("gguf", path, e))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            reader,
            mmap,
            content,
            arch: None,
            heads: 0,
            kv_heads: 0,
        })
    }

    pub fn meta_num(&self, key: &str) -> Option<f64> {
        self.content.metadata.get(key).and_then(num)
    }

    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.content
            .metadata
            .get(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    }

    pub fn meta_strings(&self, key: &str) -> Option<Vec<String>> {
        let arr = self.content.metadata.get(key)?.to_vec().ok()?;
        arr.iter().map(|v| v.to_string().ok().cloned()).collect()
    }

    pub fn meta_nums(&self, key: &str) -> Option<Vec<f64>> {
        let arr = self.content.metadata.get(key)?.to_vec().ok()?;
        arr.iter().map(num).collect()
    }

    pub fn config(&mut self) -> Result<ModelConfig> {
        let arch = self
            .meta_str("general.architecture")
            .unwrap_or("")
            .to_string();
        let vocab = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| Error::file("gguf", &self.path, "no token_embd.weight tensor"))?;
        let has_output = self.content.tensor_infos.contains_key("output.weight");
        let cfg = ModelConfig::from_gguf(&|k| self.meta_num(k), &arch, vocab, has_output)?;
        self.arch = Some(cfg.arch);
        self.heads = cfg.heads;
        self.kv_heads = cfg.kv_heads;
        Ok(cfg)
    }

    fn gguf_name(name: &TensorName) -> String {
        let proj = |p: Proj| match p {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
        };
        match *name {
            TensorName::Embed => "token_embd.weight".into(),
            TensorName::FinalNorm => "output_norm.weight".into(),
            TensorName::LmHead => "output.weight".into(),
            TensorName::AttnNorm(l) => format!("blk.{l}.attn_norm.weight"),
            TensorName::MlpNorm(l) => format!("blk.{l}.ffn_norm.weight"),
            TensorName::Weight(l, p) => format!("blk.{l}.{}.weight", proj(p)),
            TensorName::Bias(l, p) => format!("blk.{l}.{}.bias", proj(p)),
        }
    }
}

/// The row permutation that inverts llama.cpp's q/k permutation: output row `dst` is input row
/// `perm[dst]`, rows `(head, pair, 2)` going back to `(head, 2, pair)`.
fn unpermute_rows(rows: usize, heads: usize) -> Vec<usize> {
    let hd = rows / heads;
    let mut perm = vec![0; rows];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                perm[h * hd + j * (hd / 2) + i] = h * hd + i * 2 + j;
            }
        }
    }
    perm
}

/// Inverts llama.cpp's q/k permutation on dense rows of `cols` values.
fn unpermute(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let perm = unpermute_rows(w.len() / cols, heads);
    let mut out = Vec::with_capacity(w.len());
    for src in perm {
        out.extend_from_slice(&w[src * cols..(src + 1) * cols]);
    }
    out
}

impl GgufFile {
    /// Heads whose rows llama.cpp permuted in this tensor (q and k of the llama arch), if any.
    fn permuted_heads(&self, name: &TensorName) -> Option<usize> {
        if self.arch != Some(Arch::Llama) {
            return None;
        }
        match name {
            TensorName::Weight(_, Proj::Q) | TensorName::Bias(_, Proj::Q) => Some(self.heads),
            TensorName::Weight(_, Proj::K) | TensorName::Bias(_, Proj::K) => Some(self.kv_heads),
            _ => None,
        }
    }
}

impl TensorSource for GgufFile {
    fn get(&mut self, name: &TensorName) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        let key = Self::gguf_name(name);
        if !self.content.tensor_infos.contains_key(&key) {
            return Ok(None);
        }
        let q = self
            .content
            .tensor(&mut self.reader, &key, &Device::Cpu)
            .map_err(|e| Error::file("gguf", &self.path, format!("{key}: {e}")))?;
        let t = q.dequantize(&Device::Cpu)?;
        let shape = t.dims().to_vec();
        let mut data = t.flatten_all()?.to_vec1::<f32>()?;
        if let Some(heads) = self.permuted_heads(name) {
            let cols = shape.last().copied().unwrap_or(1);
            data = unpermute(&data, heads, cols);
        }
        Ok(Some((data, shape)))
    }

    fn get_native(&mut self, name: &TensorName) -> Result<Option<QMatrix>> {
        let key = Self::gguf_name(name);
        let Some(info) = self.content.tensor_infos.get(&key) else {
            return Ok(None);
        };
        let bad = |m: String| Error::file("gguf", &self.path, format!("{key}: {m}"));
        let dims = info.shape.dims();
        let [rows, cols] = dims[..] else {
            return Err(bad(format!("expected a matrix, found shape {dims:?}")));
        };
        let format = WeightFormat::ALL
            .into_iter()
            .find(|f| f.ggml_dtype() == info.ggml_dtype)
            .ok_or_else(|| bad(format!("unsupported tensor type {:?}", info.ggml_dtype)))?;
        let start = self.content.tensor_data_offset as usize + info.offset as usize;
        let end = start + rows * format.row_bytes(cols);
        if end > self.mmap.len() {
            return Err(bad("tensor data runs past the end of the file".into()));
        }
        let storage = QStorage::mapped(self.mmap.clone(), start..end);
        let q = QMatrix::from_bytes(format, rows, cols, storage).map_err(|e| bad(e.to_string()))?;
        match self.permuted_heads(name) {
            Some(heads) => {
                let p = q.permute_rows(&unpermute_rows(rows, heads));
                // The permuted copy is what stays; the file's pages need not stay resident.
                q.storage().release_pages();
                p.map(Some).map_err(|e| bad(e.to_string()))
            }
            None => Ok(Some(q)),
        }
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2)
        let (heads, hd, cols) = (2, 6, 3);
        let hf: Vec<f32> = (0..heads * hd * cols).map(|x| x as f32).collect();
        let mut permuted = vec![0f32; hf.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..hd / 2 {
                    let src = h * hd + j * (hd / 2) + i;
                    let dst = h * hd + i * 2 + j;
                    permuted[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_eq!(super::unpermute(&permuted, heads, cols), hf);
    }
}
