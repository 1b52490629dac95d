//! The weights of a Llama-family model in the HF layout (`[out, in]` per projection, q/k rows in
//! the rotate-half order), held in host memory in the format chosen at load (`LoadOptions`):
//! dense f32 (the exact reference path), or a `QMatrix` that keeps the file's own format (GGUF
//! quant blocks straight from the memory map, HF 16-bit tensors as they are) or a format quantized
//! at load. Whatever the source, every shape is checked against the `ModelConfig` here.

use super::{ActivationMode, ModelConfig};
use crate::error::{Error, Result};
use crate::model::Proj;
use crate::ops::cpu::quant::{QMatrix, WeightFormat};
use crate::progress::{Progress, Unit};

/// How weights are kept in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightDtype {
    /// As stored: GGUF quant formats and HF 16-bit tensors stay as they are.
    #[default]
    Auto,
    /// Dequantized to dense f32 at load (the exact reference path).
    F32,
}

/// Load-time choices for the weights.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    pub dtype: WeightDtype,
    /// Quantize every projection (and the output head) to this format at load (ISQ).
    pub quantize: Option<WeightFormat>,
    /// How activations are rounded against block-quantized weights (`--activations`).
    pub activations: ActivationMode,
}

/// One weight matrix `[out, in]`.
pub enum Weight {
    Dense(Vec<f32>),
    Quant(QMatrix),
}

impl Weight {
    /// Row `i` as f32 (embedding lookup).
    pub fn row(&self, i: usize, cols: usize, out: &mut [f32]) {
        match self {
            Weight::Dense(w) => out.copy_from_slice(&w[i * cols..(i + 1) * cols]),
            Weight::Quant(q) => q.dequantize_row(i, out),
        }
    }

    /// Bytes held in memory (mapped bytes included).
    pub fn bytes(&self) -> usize {
        match self {
            Weight::Dense(w) => w.len() * 4,
            Weight::Quant(q) => q.byte_len(),
        }
    }

    /// The format, e.g. "q4_1", with "/packed" when in the CPU kernels' packed layout and the
    /// activations' rounding ("/int16") for block formats.
    pub fn describe(&self) -> String {
        match self {
            Weight::Dense(_) => "f32".into(),
            Weight::Quant(q) => {
                let mut s = q.format().name().to_string();
                if q.is_packed() {
                    s += "/packed";
                }
                if !q.format().is_float() {
                    s = format!("{s}/{}", q.act_precision().name());
                }
                s
            }
        }
    }
}

pub struct Linear {
    pub w: Weight,
    pub out: usize,
    pub inp: usize,
    pub bias: Option<Vec<f32>>,
}

pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub mlp_norm: Vec<f32>,
    /// Indexed by `Proj::index()`.
    pub proj: Vec<Linear>,
}

pub struct LlamaWeights {
    pub embed: Weight,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>,
    /// `None` when tied to `embed`.
    pub lm_head: Option<Weight>,
}

/// A source of named tensors (GGUF or safetensors) in logical names.
pub trait TensorSource {
    /// The tensor as f32 and its shape in `[out, in]` order, or `None` if absent.
    fn get(&mut self, name: &TensorName) -> Result<Option<(Vec<f32>, Vec<usize>)>>;
    /// A 2-D tensor in its stored format (no conversion), or `None` if absent. Sources that
    /// cannot keep a format return it dequantized in a `QMatrix` of f32 rows.
    fn get_native(&mut self, name: &TensorName) -> Result<Option<QMatrix>>;
    fn describe(&self) -> String;
}

/// Logical tensor names, mapped by each source to its own naming.
#[derive(Debug, Clone, Copy)]
pub enum TensorName {
    Embed,
    FinalNorm,
    LmHead,
    AttnNorm(usize),
    MlpNorm(usize),
    Weight(usize, Proj),
    Bias(usize, Proj),
}

fn missing(name: &TensorName, src: &dyn TensorSource) -> Error {
    Error::unsupported(
        format!("tensor {name:?}"),
        format!("missing from {}", src.describe()),
    )
}

fn wrong_shape(name: &TensorName, got: &[usize], want: &[usize]) -> Error {
    Error::unsupported(
        format!("tensor {name:?}"),
        format!("shape {got:?}, expected {want:?}"),
    )
}

/// Reads one tensor as f32, checking its shape.
fn dense(src: &mut dyn TensorSource, name: TensorName, shape: &[usize]) -> Result<Vec<f32>> {
    let (data, got) = src.get(&name)?.ok_or_else(|| missing(&name, src))?;
    if got != shape {
        return Err(wrong_shape(&name, &got, shape));
    }
    Ok(data)
}

/// Reads one matrix in the format `opts` asks for, checking its shape.
fn matrix(
    src: &mut dyn TensorSource,
    name: TensorName,
    (rows, cols): (usize, usize),
    opts: &LoadOptions,
    quantize: Option<WeightFormat>,
) -> Result<Weight> {
    if opts.dtype == WeightDtype::F32 {
        return Ok(Weight::Dense(dense(src, name, &[rows, cols])?));
    }
    let act = opts.activations.resolve();
    if let Some(fmt) = quantize {
        let data = dense(src, name, &[rows, cols])?;
        // k-quants need rows of whole 256-value super-blocks; narrower rows fall back to Q8_0
        // (as llama.cpp's quantizer does), which every Llama width allows.
        let fmt = match cols % fmt.block_len() {
            0 => fmt,
            _ => WeightFormat::Q8_0,
        };
        let q = QMatrix::quantize(&data, rows, cols, fmt)
            .map_err(|e| Error::unsupported(format!("quantizing {name:?}"), e.to_string()))?;
        return Ok(Weight::Quant(q.with_act_precision(act).packed()));
    }
    let q = src.get_native(&name)?.ok_or_else(|| missing(&name, src))?;
    if (q.rows(), q.cols()) != (rows, cols) {
        return Err(wrong_shape(&name, &[q.rows(), q.cols()], &[rows, cols]));
    }
    // The CPU kernels' layout where the format has one (a copy: the file's pages are then only
    // read once, at load).
    Ok(Weight::Quant(q.with_act_precision(act).packed()))
}

/// A tensor source that reports each tensor read as load progress.
struct Counted<'a> {
    src: &'a mut dyn TensorSource,
    progress: Progress,
}

impl TensorSource for Counted<'_> {
    fn get(&mut self, name: &TensorName) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        let t = self.src.get(name)?;
        self.progress.inc(1);
        Ok(t)
    }

    fn get_native(&mut self, name: &TensorName) -> Result<Option<QMatrix>> {
        let t = self.src.get_native(name)?;
        self.progress.inc(1);
        Ok(t)
    }

    fn describe(&self) -> String {
        self.src.describe()
    }
}

impl LlamaWeights {
    /// Loads every tensor of `cfg` from `src` (progress reported in tensors on stderr).
    pub fn load(cfg: &ModelConfig, src: &mut dyn TensorSource, opts: &LoadOptions) -> Result<Self> {
        let bias = if cfg.qkv_bias { 3 } else { 0 };
        let total =
            2 + cfg.layers * (2 + Proj::ALL.len() + bias) + usize::from(!cfg.tie_embeddings);
        let mut counted = Counted {
            src,
            progress: Progress::new(
                "loading weights",
                Some(total as u64),
                Unit::Items("tensors"),
            ),
        };
        let w = Self::load_from(cfg, &mut counted, opts)?;
        counted.progress.finish();
        Ok(w)
    }

    fn load_from(
        cfg: &ModelConfig,
        src: &mut dyn TensorSource,
        opts: &LoadOptions,
    ) -> Result<Self> {
        // The embedding is only ever read row by row: it keeps its stored format unless f32.
        let embed = matrix(
            src,
            TensorName::Embed,
            (cfg.vocab_size, cfg.hidden),
            opts,
            None,
        )?;
        let final_norm = dense(src, TensorName::FinalNorm, &[cfg.hidden])?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let attn_norm = dense(src, TensorName::AttnNorm(l), &[cfg.hidden])?;
            let mlp_norm = dense(src, TensorName::MlpNorm(l), &[cfg.hidden])?;
            let mut proj = Vec::with_capacity(7);
            for p in Proj::ALL {
                let (out, inp) = cfg.proj_shape(p);
                let w = matrix(
                    src,
                    TensorName::Weight(l, p),
                    (out, inp),
                    opts,
                    opts.quantize,
                )?;
                let bias = if cfg.qkv_bias && matches!(p, Proj::Q | Proj::K | Proj::V) {
                    Some(dense(src, TensorName::Bias(l, p), &[out])?)
                } else {
                    None
                };
                proj.push(Linear { w, out, inp, bias });
            }
            layers.push(LayerWeights {
                attn_norm,
                mlp_norm,
                proj,
            });
        }
        let head = (cfg.vocab_size, cfg.hidden);
        let lm_head = match cfg.tie_embeddings {
            true => None,
            false => Some(matrix(src, TensorName::LmHead, head, opts, opts.quantize)?),
        };
        Ok(LlamaWeights {
            embed,
            layers,
            final_norm,
            lm_head,
        })
    }

    pub fn lm_head(&self) -> &Weight {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes of all weights held (mapped or owned).
    pub fn bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| l.proj.iter().map(|p| p.w.bytes()).sum::<usize>())
            .sum();
        layers + self.embed.bytes() + self.lm_head.as_ref().map_or(0, Weight::bytes)
    }

    /// Whether any projection is block-quantized (its products round the activations, so the
    /// CPU executor reads adapters in bf16 next to it; float weights keep f32 adapters).
    pub fn has_quantized(&self) -> bool {
        self.layers
            .iter()
            .flat_map(|l| &l.proj)
            .any(|p| match &p.w {
                Weight::Quant(q) => !q.format().is_float(),
                Weight::Dense(_) => false,
            })
    }

    /// The formats of the projections, e.g. "q4_1/packed x 210" (for the startup log).
    pub fn describe(&self) -> String {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for p in self.layers.iter().flat_map(|l| &l.proj) {
            match counts.iter_mut().find(|(n, _)| *n == p.w.describe()) {
                Some(c) => c.1 += 1,
                None => counts.push((p.w.describe(), 1)),
            }
        }
        let parts: Vec<String> = counts.iter().map(|(n, c)| format!("{n} x {c}")).collect();
        format!(
            "projections {}; embedding {}; output {}",
            parts.join(", "),
            self.embed.describe(),
            self.lm_head().describe()
        )
    }
}
