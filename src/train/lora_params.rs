//! The trainable LoRA pairs of one run: `A: [r, in]` and `B: [out, r]` candle `Var`s for every
//! chosen target in every layer, initialised as PEFT does (`A` Kaiming-uniform with `a = sqrt(5)`,
//! i.e. U(-1/sqrt(in), 1/sqrt(in)); `B` zero, so training starts at the base model), saved as a
//! PEFT adapter (`adapter_config.json` + `adapter_model.safetensors`, PEFT's names and keys) that
//! openlora's own loader reads with no special case. Files are written to a temporary name and
//! renamed, so a reader never sees half a file.

use super::tensor_io::{cerr, flat, write_atomic, write_safetensors};
use crate::error::{Error, Result};
use crate::lora::{AdapterId, LoraAdapter, LoraConfig, LoraWeights, CONFIG_FILE, WEIGHTS_FILE};
use crate::model::{ModelConfig, Proj};
use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;

/// What the LoRA pairs are: rank, alpha, targets and the dropout on their input.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSettings {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<Proj>,
    pub dropout: f32,
}

impl LoraSettings {
    /// Checks the settings once (at the edge); every later use relies on it.
    pub fn checked(self) -> Result<Self> {
        if self.rank == 0 || self.rank > 1024 {
            return Err(Error::invalid("rank", "must be in 1..=1024"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::invalid("alpha", "must be a positive number"));
        }
        if self.targets.is_empty() {
            return Err(Error::invalid(
                "targets",
                "name at least one of q,k,v,o,gate,up,down",
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid("lora_dropout", "must be in [0, 1)"));
        }
        Ok(self)
    }

    /// `q,k,v,o,gate,up,down` (or PEFT module names), comma-separated.
    pub fn parse_targets(s: &str) -> Result<Vec<Proj>> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let p = Proj::from_module_name(name)
                .or_else(|| Proj::from_module_name(&format!("{name}_proj")))
                .ok_or_else(|| {
                    Error::invalid(
                        "targets",
                        format!("unknown target `{name}` (expected q,k,v,o,gate,up,down)"),
                    )
                })?;
            if !out.contains(&p) {
                out.push(p);
            }
        }
        Ok(out)
    }

    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// One projection's trainable pair.
pub struct LoraPair {
    pub a: Var,
    pub b: Var,
}

pub struct LoraParams {
    pub settings: LoraSettings,
    /// `layers[l][proj.index()]`.
    pub layers: Vec<[Option<LoraPair>; 7]>,
}

/// PEFT's tensor name of a pair's `A` or `B`.
pub fn peft_name(layer: usize, p: Proj, a: bool) -> String {
    let parent = match p {
        Proj::Gate | Proj::Up | Proj::Down => "mlp",
        _ => "self_attn",
    };
    let ab = if a { "A" } else { "B" };
    format!(
        "base_model.model.model.layers.{layer}.{parent}.{}.lora_{ab}.weight",
        p.module_name()
    )
}

impl LoraParams {
    /// Fresh pairs (PEFT's initialisation) drawn from `seed`, as f32.
    pub fn init(cfg: &ModelConfig, settings: LoraSettings, seed: u64) -> Result<Self> {
        Self::init_as(cfg, settings, seed, DType::F32)
    }

    /// The same with pairs of `dtype` (f64: exact gradient checks).
    pub fn init_as(
        cfg: &ModelConfig,
        settings: LoraSettings,
        seed: u64,
        dtype: DType,
    ) -> Result<Self> {
        Self::init_on(cfg, settings, seed, dtype, &Device::Cpu)
    }

    /// The same on `dev` (the values are drawn on the host, so they do not depend on the device).
    pub fn init_on(
        cfg: &ModelConfig,
        settings: LoraSettings,
        seed: u64,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let r = settings.rank;
        let mut layers = Vec::with_capacity(cfg.layers);
        for _ in 0..cfg.layers {
            let mut row: [Option<LoraPair>; 7] = Default::default();
            for p in Proj::ALL
                .into_iter()
                .filter(|p| settings.targets.contains(p))
            {
                let (out, inp) = cfg.proj_shape(p);
                let bound = 1.0 / (inp as f32).sqrt();
                let a: Vec<f32> = (0..r * inp)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                row[p.index()] = Some(LoraPair {
                    a: var(a, (r, inp), dtype, dev)?,
                    b: Var::zeros((out, r), dtype, dev).map_err(cerr)?,
                });
            }
            layers.push(row);
        }
        Ok(LoraParams { settings, layers })
    }

    pub fn get(&self, layer: usize, p: Proj) -> Option<&LoraPair> {
        self.layers[layer][p.index()].as_ref()
    }

    /// Every trainable tensor with its PEFT name, in a fixed order (layer, projection, A then B).
    pub fn named(&self) -> Vec<(String, &Var)> {
        let mut out = Vec::new();
        for (l, row) in self.layers.iter().enumerate() {
            for p in Proj::ALL {
                if let Some(pair) = &row[p.index()] {
                    out.push((peft_name(l, p, true), &pair.a));
                    out.push((peft_name(l, p, false), &pair.b));
                }
            }
        }
        out
    }

    /// Number of trainable values.
    pub fn num_params(&self) -> usize {
        self.named().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (created).
    pub fn save_peft(&self, dir: &Path, base_model: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tensors = self
            .named()
            .into_iter()
            .map(|(n, v)| Ok((n, v.as_tensor().clone())))
            .collect::<Result<Vec<_>>>()?;
        write_safetensors(&dir.join(WEIGHTS_FILE), &tensors)?;
        let s = &self.settings;
        let mut modules: Vec<&str> = s.targets.iter().map(|p| p.module_name()).collect();
        modules.sort_unstable();
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": s.rank,
            "lora_alpha": s.alpha,
            "lora_dropout": s.dropout,
            "target_modules": modules,
            "bias": "none",
            "use_rslora": false,
            "use_dora": false,
            "fan_in_fan_out": false,
            "init_lora_weights": true,
            "inference_mode": true,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "revision": null,
        });
        let text =
            serde_json::to_string_pretty(&config).map_err(|e| Error::Internal(e.to_string()))?;
        write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
    }

    /// Reads a PEFT adapter written by `save_peft` back into trainable f32 pairs on `dev` (resume).
    pub fn load_peft(
        dir: &Path,
        cfg: &ModelConfig,
        settings: LoraSettings,
        dev: &Device,
    ) -> Result<Self> {
        let adapter = LoraAdapter::load("checkpoint", dir, cfg)?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for row in &adapter.layers {
            let mut out: [Option<LoraPair>; 7] = Default::default();
            for p in Proj::ALL {
                if let Some(w) = &row[p.index()] {
                    let (o, i) = cfg.proj_shape(p);
                    out[p.index()] = Some(LoraPair {
                        a: var(w.a.clone(), (w.rank, i), DType::F32, dev)?,
                        b: var(w.b.clone(), (o, w.rank), DType::F32, dev)?,
                    });
                }
            }
            layers.push(out);
        }
        let found: Vec<Proj> = Proj::ALL
            .into_iter()
            .filter(|p| {
                layers
                    .iter()
                    .any(|r: &[Option<LoraPair>; 7]| r[p.index()].is_some())
            })
            .collect();
        let mut want = settings.targets.clone();
        want.sort_by_key(|p| p.index());
        if found != want || adapter.config.r != settings.rank {
            return Err(Error::invalid(
                "resume",
                "the checkpoint's rank or targets differ from this run's settings",
            ));
        }
        Ok(LoraParams { settings, layers })
    }

    /// The pairs as an in-memory adapter of the inference engine (same math as the saved files).
    pub fn to_adapter(&self, name: &str) -> Result<LoraAdapter> {
        let s = &self.settings;
        let config = LoraConfig {
            r: s.rank,
            alpha: s.alpha,
            use_rslora: false,
            target_modules: s.targets.clone(),
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for row in &self.layers {
            let mut out: [Option<LoraWeights>; 7] = Default::default();
            for p in Proj::ALL {
                if let Some(pair) = &row[p.index()] {
                    out[p.index()] = Some(LoraWeights {
                        a: flat(pair.a.as_tensor())?,
                        b: flat(pair.b.as_tensor())?,
                        rank: s.rank,
                        scale: config.scale(s.rank),
                    });
                }
            }
            layers.push(out);
        }
        Ok(LoraAdapter {
            uid: AdapterId::fresh_in_memory(),
            name: name.to_string(),
            path: std::path::PathBuf::new(),
            config,
            layers,
        })
    }
}

/// A trainable tensor of `dtype` on `dev` from f32 values.
fn var(v: Vec<f32>, shape: (usize, usize), dtype: DType, dev: &Device) -> Result<Var> {
    Tensor::from_vec(v, shape, dev)
        .and_then(|t| t.to_dtype(dtype))
        .and_then(|t| Var::from_tensor(&t))
        .map_err(cerr)
}
