//! A PEFT LoRA adapter: `adapter_config.json` + `adapter_model.safetensors`, parsed and checked
//! against the base model's shapes at load, so a bad adapter fails here and never inside a batch.
//! Weights are kept as `A: [r, in]`, `B: [out, r]` (f32) with the scale `alpha/r` (or
//! `alpha/sqrt(r)` with rsLoRA) folded into `scale`.

use super::spec::{check_shape, parse_tensor_name, AdapterSpec, CONFIG_FILE, WEIGHTS_FILE};
use super::{AdapterId, Proj};
use crate::error::{Error, Result};
use crate::model::safetensors_file::to_f32;
use crate::model::ModelConfig;
use regex::Regex;
use safetensors::SafeTensors;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The fields of `adapter_config.json` that change the math; everything else is rejected or ignored
/// as documented in `LoraConfig::parse`.
#[derive(Debug, Clone)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub use_rslora: bool,
    pub target_modules: Vec<Proj>,
}

impl LoraConfig {
    pub fn parse(v: &Value, path: &Path) -> Result<Self> {
        let bad = |m: String| Error::file("adapter_config.json", path, m);
        if let Some(t) = v.get("peft_type").and_then(Value::as_str) {
            if t != "LORA" {
                return Err(bad(format!("peft_type `{t}` is not supported (only LORA)")));
            }
        }
        let r = v
            .get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .ok_or_else(|| bad("`r` must be a positive integer".into()))? as usize;
        let alpha = v
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .ok_or_else(|| bad("`lora_alpha` is missing".into()))?;
        let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
        for k in ["use_dora", "lora_bias"] {
            if flag(k) {
                return Err(bad(format!("`{k}: true` is not supported")));
            }
        }
        match v.get("bias").and_then(Value::as_str).unwrap_or("none") {
            "none" => {}
            other => {
                return Err(bad(format!(
                    "`bias: {other}` is not supported (only \"none\")"
                )))
            }
        }
        for k in ["rank_pattern", "alpha_pattern"] {
            if v.get(k)
                .and_then(Value::as_object)
                .is_some_and(|o| !o.is_empty())
            {
                return Err(bad(format!("a non-empty `{k}` is not supported")));
            }
        }
        if v.get("modules_to_save")
            .is_some_and(|m| !m.is_null() && m.as_array().is_none_or(|a| !a.is_empty()))
        {
            return Err(bad("`modules_to_save` is not supported".into()));
        }
        // fan_in_fan_out only concerns Conv1D base layers; PEFT itself ignores it for nn.Linear.
        let target_modules = match v.get("target_modules") {
            Some(Value::Array(list)) => list
                .iter()
                .map(|m| {
                    let name = m.as_str().unwrap_or_default();
                    Proj::from_module_name(name).ok_or_else(|| bad(format!("unknown target module `{name}` (supported: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)")))
                })
                .collect::<Result<Vec<_>>>()?,
            Some(Value::String(pattern)) => {
                // PEFT matches a regex string against the full module name.
                let re = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| bad(format!("target_modules regex: {e}")))?;
                let sample = |p: Proj| {
                    let parent = if matches!(p, Proj::Gate | Proj::Up | Proj::Down) { "mlp" } else { "self_attn" };
                    format!("model.layers.0.{parent}.{}", p.module_name())
                };
                Proj::ALL.into_iter().filter(|&p| re.is_match(&sample(p))).collect()
            }
            _ => return Err(bad("`target_modules` must be a list or a regex string".into())),
        };
        Ok(LoraConfig {
            r,
            alpha,
            use_rslora: flag("use_rslora"),
            target_modules,
        })
    }

    pub fn scale(&self, rank: usize) -> f32 {
        if self.use_rslora {
            (self.alpha / (rank as f64).sqrt()) as f32
        } else {
            (self.alpha / rank as f64) as f32
        }
    }
}

/// One projection's LoRA pair.
#[derive(Debug, Clone)]
pub struct LoraWeights {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub rank: usize,
    pub scale: f32,
}

/// A loaded adapter: `layers[l][proj]`.
#[derive(Debug)]
pub struct LoraAdapter {
    /// The registered adapter's id, or a fresh in-memory id (`AdapterId::fresh_in_memory`).
    pub uid: AdapterId,
    pub name: String,
    pub path: PathBuf,
    pub config: LoraConfig,
    pub layers: Vec<[Option<LoraWeights>; 7]>,
}

impl LoraAdapter {
    /// Reads `adapter_config.json` only (cheap): used to register many adapters lazily.
    pub fn read_config(dir: &Path) -> Result<LoraConfig> {
        let path = dir.join(CONFIG_FILE);
        let text = super::regular_file::read_to_string(&path)?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| Error::file(CONFIG_FILE, &path, e))?;
        LoraConfig::parse(&v, &path)
    }

    /// Loads and validates an adapter folder against the base model (eagerly, from disk).
    pub fn load(name: &str, dir: &Path, model: &ModelConfig) -> Result<Self> {
        let spec = AdapterSpec::read(AdapterId::fresh_in_memory(), name, dir, model)?;
        let path = spec.weights_path();
        let bytes = super::regular_file::read(&path)?;
        Self::from_bytes(&spec, &bytes, model)
    }

    /// Builds the compute-ready layout from the bytes of the spec's safetensors file. Every check
    /// of `AdapterSpec::read` is repeated, so bytes that changed since registration fail here.
    pub fn from_bytes(spec: &AdapterSpec, bytes: &[u8], model: &ModelConfig) -> Result<Self> {
        let path = spec.weights_path();
        let bad = |m: String| Error::file(WEIGHTS_FILE, &path, m);
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| Error::file("safetensors", &path, e))?;
        let mut pending: Vec<[(Option<Vec<f32>>, Option<Vec<f32>>); 7]> =
            (0..model.layers).map(|_| Default::default()).collect();
        for (name, view) in st.tensors() {
            let (layer, proj, is_a) = parse_tensor_name(&name, model.layers).map_err(bad)?;
            check_shape(&name, view.shape(), proj, is_a, model).map_err(bad)?;
            let data = to_f32(view.dtype(), view.data())
                .ok_or_else(|| bad(format!("`{name}` has unsupported dtype {:?}", view.dtype())))?;
            let slot = &mut pending[layer][proj.index()];
            match is_a {
                true => slot.0 = Some(data),
                false => slot.1 = Some(data),
            }
        }
        let mut layers = Vec::with_capacity(model.layers);
        for (l, projs) in pending.into_iter().enumerate() {
            let mut row: [Option<LoraWeights>; 7] = Default::default();
            for (p, pair) in projs.into_iter().enumerate() {
                let proj = Proj::ALL[p];
                let (out, inp) = model.proj_shape(proj);
                row[p] = match pair {
                    (None, None) => None,
                    (Some(a), Some(b)) if a.len() / inp * out == b.len() => {
                        let rank = a.len() / inp;
                        Some(LoraWeights {
                            a,
                            b,
                            rank,
                            scale: spec.config.scale(rank),
                        })
                    }
                    (Some(_), Some(_)) => {
                        return Err(bad(format!(
                            "layer {l} {}: lora_A rank does not match lora_B",
                            proj.module_name()
                        )))
                    }
                    _ => {
                        return Err(bad(format!(
                            "layer {l} {}: lora_A and lora_B must both be present",
                            proj.module_name()
                        )))
                    }
                };
            }
            layers.push(row);
        }
        if layers.iter().all(|r| r.iter().all(Option::is_none)) {
            return Err(bad("no LoRA tensors found".into()));
        }
        Ok(LoraAdapter {
            uid: spec.id,
            name: spec.name.clone(),
            path: spec.dir.clone(),
            config: spec.config.clone(),
            layers,
        })
    }

    /// Bytes of weights held.
    pub fn size_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .flatten()
            .map(|w| (w.a.len() + w.b.len()) * 4)
            .sum()
    }

    pub fn get(&self, layer: usize, proj: Proj) -> Option<&LoraWeights> {
        self.layers[layer][proj.index()].as_ref()
    }
}
