//! The dense f32 weights of a Llama-family model, in the HF layout (`[out, in]` per projection,
//! q/k rows in the rotate-half order). Whatever the source format, the loaders produce exactly
//! this, with every shape checked against the `ModelConfig`.

use super::ModelConfig;
use crate::error::{Error, Result};
use crate::lora::Proj;

pub struct Linear {
    pub w: Vec<f32>,
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
    pub embed: Vec<f32>,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>,
    /// `None` when tied to `embed`.
    pub lm_head: Option<Vec<f32>>,
}

/// A source of named tensors (GGUF or safetensors) in logical names.
pub trait TensorSource {
    /// The tensor as f32 and its shape in `[out, in]` order, or `None` if absent.
    fn get(&mut self, name: &TensorName) -> Result<Option<(Vec<f32>, Vec<usize>)>>;
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

impl LlamaWeights {
    pub fn load(cfg: &ModelConfig, src: &mut dyn TensorSource) -> Result<Self> {
        let mut need = |name: TensorName, shape: &[usize]| -> Result<Vec<f32>> {
            let (data, got) = src.get(&name)?.ok_or_else(|| {
                Error::unsupported(
                    format!("tensor {name:?}"),
                    format!("missing from {}", src.describe()),
                )
            })?;
            if got != shape {
                return Err(Error::unsupported(
                    format!("tensor {name:?}"),
                    format!("shape {got:?}, expected {shape:?}"),
                ));
            }
            Ok(data)
        };
        let embed = need(TensorName::Embed, &[cfg.vocab_size, cfg.hidden])?;
        let final_norm = need(TensorName::FinalNorm, &[cfg.hidden])?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let attn_norm = need(TensorName::AttnNorm(l), &[cfg.hidden])?;
            let mlp_norm = need(TensorName::MlpNorm(l), &[cfg.hidden])?;
            let mut proj = Vec::with_capacity(7);
            for p in Proj::ALL {
                let (out, inp) = cfg.proj_shape(p);
                let w = need(TensorName::Weight(l, p), &[out, inp])?;
                let bias = if cfg.qkv_bias && matches!(p, Proj::Q | Proj::K | Proj::V) {
                    Some(need(TensorName::Bias(l, p), &[out])?)
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
        let lm_head = match cfg.tie_embeddings {
            true => None,
            false => Some(need(TensorName::LmHead, &[cfg.vocab_size, cfg.hidden])?),
        };
        Ok(LlamaWeights {
            embed,
            layers,
            final_norm,
            lm_head,
        })
    }

    pub fn lm_head(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embed)
    }
}
