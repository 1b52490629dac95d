//! A PEFT LoRA adapter: `adapter_config.json` + `adapter_model.safetensors`, parsed and checked
//! against the base model's shapes at load, so a bad adapter fails here and never inside a batch.
//! Weights are kept as `A: [r, in]`, `B: [out, r]` (f32) with the scale `alpha/r` (or
//! `alpha/sqrt(r)` with rsLoRA) folded into `scale`.

use super::Proj;
use crate::error::{Error, Result};
use crate::model::safetensors_file::SafetensorsFile;
use crate::model::ModelConfig;
use regex::Regex;
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
    pub name: String,
    pub path: PathBuf,
    pub config: LoraConfig,
    pub layers: Vec<[Option<LoraWeights>; 7]>,
}

impl LoraAdapter {
    /// Reads `adapter_config.json` only (cheap): used to register many adapters lazily.
    pub fn read_config(dir: &Path) -> Result<LoraConfig> {
        let path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::file("adapter_config.json", &path, e))?;
        LoraConfig::parse(&v, &path)
    }

    /// Loads and validates an adapter folder against the base model.
    pub fn load(name: &str, dir: &Path, model: &ModelConfig) -> Result<Self> {
        let config = Self::read_config(dir)?;
        let path = dir.join("adapter_model.safetensors");
        let file = SafetensorsFile::open(&path)?;
        let bad = |m: String| Error::file("adapter_model.safetensors", &path, m);
        let key_re = Regex::new(
            r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$",
        )
        .expect("static regex");
        let mut pending: Vec<[(Option<Vec<f32>>, Option<Vec<f32>>); 7]> =
            (0..model.layers).map(|_| Default::default()).collect();
        for name in file.names() {
            let caps = key_re.captures(&name).ok_or_else(|| bad(format!("unexpected tensor `{name}` (only lora_A/lora_B of q,k,v,o,gate,up,down are supported)")))?;
            let layer: usize = caps[1]
                .parse()
                .map_err(|_| bad(format!("bad layer index in `{name}`")))?;
            let proj = Proj::from_module_name(&caps[2])
                .ok_or_else(|| bad(format!("unknown target module `{}` in `{name}`", &caps[2])))?;
            if layer >= model.layers {
                return Err(bad(format!(
                    "`{name}`: layer {layer} but the base model has {} layers",
                    model.layers
                )));
            }
            let (data, shape) = file.tensor_f32(&name)?;
            let (out, inp) = model.proj_shape(proj);
            let slot = &mut pending[layer][proj.index()];
            match &caps[3] {
                "A" => {
                    if shape.len() != 2 || shape[1] != inp {
                        return Err(bad(format!(
                            "`{name}` has shape {shape:?}, expected [r, {inp}]"
                        )));
                    }
                    slot.0 = Some(data);
                }
                _ => {
                    if shape.len() != 2 || shape[0] != out {
                        return Err(bad(format!(
                            "`{name}` has shape {shape:?}, expected [{out}, r]"
                        )));
                    }
                    slot.1 = Some(data);
                }
            }
        }
        let mut layers = Vec::with_capacity(model.layers);
        for (l, projs) in pending.into_iter().enumerate() {
            let mut row: [Option<LoraWeights>; 7] = Default::default();
            for (p, (a, b)) in projs.into_iter().enumerate() {
                let proj = Proj::ALL[p];
                match (a, b) {
                    (None, None) => {}
                    (Some(a), Some(b)) => {
                        let (out, inp) = model.proj_shape(proj);
                        let rank = a.len() / inp;
                        if b.len() != out * rank {
                            return Err(bad(format!(
                                "layer {l} {}: lora_A rank {rank} does not match lora_B",
                                proj.module_name()
                            )));
                        }
                        row[p] = Some(LoraWeights {
                            a,
                            b,
                            rank,
                            scale: config.scale(rank),
                        });
                    }
                    _ => {
                        return Err(bad(format!(
                            "layer {l} {}: lora_A and lora_B must both be present",
                            proj.module_name()
                        )))
                    }
                }
            }
            layers.push(row);
        }
        if layers.iter().all(|r| r.iter().all(Option::is_none)) {
            return Err(bad("no LoRA tensors found".into()));
        }
        Ok(LoraAdapter {
            name: name.to_string(),
            path: dir.to_path_buf(),
            config,
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
