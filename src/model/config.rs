//! The architecture of a Llama-family model, parsed once from an HF `config.json` or from GGUF
//! metadata. Every field the forward pass reads is here and already validated: an unsupported
//! feature is an `Error::Unsupported` naming the field, at load time.

use crate::error::{Error, Result};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f32,
    pub max_positions: usize,
    pub tie_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2, or Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// `head_dim / 2` inverse frequencies, with any rope scaling already applied.
    pub inv_freq: Vec<f32>,
}

fn rope_inv_freq(theta: f64, dim: usize) -> Vec<f64> {
    (0..dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / dim as f64))
        .collect()
}

/// Applies HF `rope_scaling` (types `default`, `linear`, `llama3`).
fn scale_rope(inv: Vec<f64>, scaling: &Value) -> Result<Vec<f64>> {
    if scaling.is_null() {
        return Ok(inv);
    }
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |k: &str| {
        scaling
            .get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| Error::unsupported(format!("rope_scaling.{k}"), "missing"))
    };
    match kind {
        "default" => Ok(inv),
        "linear" => {
            let f = num("factor")?;
            Ok(inv.into_iter().map(|x| x / f).collect())
        }
        "llama3" => {
            let (factor, low, high, orig) = (
                num("factor")?,
                num("low_freq_factor")?,
                num("high_freq_factor")?,
                num("original_max_position_embeddings")?,
            );
            let (low_wl, high_wl) = (orig / low, orig / high);
            Ok(inv
                .into_iter()
                .map(|f| {
                    let wl = 2.0 * std::f64::consts::PI / f;
                    if wl < high_wl {
                        f
                    } else if wl > low_wl {
                        f / factor
                    } else {
                        let smooth = (orig / wl - low) / (high - low);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect())
        }
        other => Err(Error::unsupported(
            "rope_scaling.rope_type",
            format!("`{other}` (supported: default, linear, llama3)"),
        )),
    }
}

impl ModelConfig {
    /// Parses an HF `config.json`.
    pub fn from_hf(v: &Value) -> Result<Self> {
        let get = |k: &str| v.get(k).and_then(Value::as_u64).map(|x| x as usize);
        let need = |k: &str| {
            get(k).ok_or_else(|| Error::unsupported(format!("config.json `{k}`"), "missing"))
        };
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let arch = match model_type {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "qwen2" => Arch::Qwen2,
            other => {
                return Err(Error::unsupported(
                    "model_type",
                    format!("`{other}` (supported: llama, mistral, qwen2)"),
                ))
            }
        };
        if let Some(act) = v.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(Error::unsupported(
                    "hidden_act",
                    format!("`{act}` (only silu)"),
                ));
            }
        }
        if v.get("mlp_bias").and_then(Value::as_bool) == Some(true) {
            return Err(Error::unsupported("mlp_bias", "true"));
        }
        let hidden = need("hidden_size")?;
        let heads = need("num_attention_heads")?;
        let head_dim = get("head_dim").unwrap_or(hidden / heads);
        let mut max_positions = get("max_position_embeddings").unwrap_or(4096);
        // A sliding window shorter than the context would change attention: cap the context
        // instead, so every position we serve is computed exactly.
        let sliding = v
            .get("use_sliding_window")
            .and_then(Value::as_bool)
            .unwrap_or(arch == Arch::Mistral);
        if let (true, Some(w)) = (sliding, get("sliding_window")) {
            max_positions = max_positions.min(w);
        }
        let theta = v
            .get("rope_theta")
            .and_then(Value::as_f64)
            .unwrap_or(10000.0);
        let inv = scale_rope(
            rope_inv_freq(theta, head_dim),
            v.get("rope_scaling").unwrap_or(&Value::Null),
        )?;
        Ok(ModelConfig {
            arch,
            vocab_size: need("vocab_size")?,
            hidden,
            intermediate: need("intermediate_size")?,
            layers: need("num_hidden_layers")?,
            heads,
            kv_heads: get("num_key_value_heads").unwrap_or(heads),
            head_dim,
            rms_eps: v
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6) as f32,
            max_positions,
            tie_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2
                || v.get("attention_bias")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            inv_freq: inv.into_iter().map(|x| x as f32).collect(),
        }
        .checked()?)
    }

    /// Checks the invariants the forward pass relies on.
    pub fn checked(self) -> Result<Self> {
        if self.heads == 0 || self.kv_heads == 0 || self.heads % self.kv_heads != 0 {
            return Err(Error::unsupported(
                "num_key_value_heads",
                "must divide num_attention_heads",
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(Error::unsupported(
                "head_dim",
                "must be even for rotary embeddings",
            ));
        }
        Ok(self)
    }

    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// (out, in) of a projection's weight.
    pub fn proj_shape(&self, p: super::Proj) -> (usize, usize) {
        use super::Proj::*;
        match p {
            Q => (self.q_dim(), self.hidden),
            K | V => (self.kv_dim(), self.hidden),
            O => (self.hidden, self.q_dim()),
            Gate | Up => (self.intermediate, self.hidden),
            Down => (self.hidden, self.intermediate),
        }
    }

    /// Builds the config from GGUF metadata values looked up by `meta(key)`.
    pub fn from_gguf(
        meta: &dyn Fn(&str) -> Option<f64>,
        arch_name: &str,
        vocab: usize,
        has_output: bool,
    ) -> Result<Self> {
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => {
                return Err(Error::unsupported(
                    "general.architecture",
                    format!("`{other}` (supported: llama, qwen2)"),
                ))
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let need = |k: &str| meta(&key(k)).ok_or_else(|| Error::unsupported(key(k), "missing"));
        let hidden = need("embedding_length")? as usize;
        let heads = need("attention.head_count")? as usize;
        let head_dim = meta(&key("rope.dimension_count"))
            .map(|x| x as usize)
            .unwrap_or(hidden / heads);
        let theta = meta(&key("rope.freq_base")).unwrap_or(10000.0);
        if meta(&key("rope.scaling.factor")).is_some_and(|f| f != 1.0) {
            return Err(Error::unsupported(
                key("rope.scaling"),
                "scaled rope in GGUF",
            ));
        }
        Ok(ModelConfig {
            arch,
            vocab_size: vocab,
            hidden,
            intermediate: need("feed_forward_length")? as usize,
            layers: need("block_count")? as usize,
            heads,
            kv_heads: meta(&key("attention.head_count_kv"))
                .map(|x| x as usize)
                .unwrap_or(heads),
            head_dim,
            rms_eps: need("attention.layer_norm_rms_epsilon")? as f32,
            max_positions: meta(&key("context_length")).unwrap_or(4096.0) as usize,
            tie_embeddings: !has_output,
            qkv_bias: arch == Arch::Qwen2,
            inv_freq: rope_inv_freq(theta, head_dim)
                .into_iter()
                .map(|x| x as f32)
                .collect(),
        }
        .checked()?)
    }
}
