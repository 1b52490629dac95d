//! HF model folders: `config.json` + single or sharded `*.safetensors` (with
//! `model.safetensors.index.json`), read into the logical tensor names of `weights`.

use super::safetensors_file::SafetensorsFile;
use super::weights::{TensorName, TensorSource};
use super::Proj;
use crate::error::{Error, Result};
use crate::ops::cpu::quant::QMatrix;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct HfFolder {
    dir: PathBuf,
    files: Vec<SafetensorsFile>,
    /// tensor name -> index in `files`
    index: HashMap<String, usize>,
}

pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::file("json", path, e))
}

impl HfFolder {
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if index_path.exists() {
            let v = read_json(&index_path)?;
            let map = v
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| Error::file("safetensors index", &index_path, "no weight_map"))?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect();
            names.sort();
            names.dedup();
            names
        } else if dir.join("model.safetensors").exists() {
            vec!["model.safetensors".into()]
        } else {
            return Err(Error::file(
                "model folder",
                dir,
                "no model.safetensors or model.safetensors.index.json",
            ));
        };
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, name) in shard_names.iter().enumerate() {
            let f = SafetensorsFile::open(&dir.join(name))?;
            for t in f.names() {
                index.insert(t, i);
            }
            files.push(f);
        }
        Ok(HfFolder {
            dir: dir.to_path_buf(),
            files,
            index,
        })
    }

    fn hf_name(name: &TensorName) -> String {
        let module = |l: usize, p: Proj| {
            let parent = if matches!(p, Proj::Gate | Proj::Up | Proj::Down) {
                "mlp"
            } else {
                "self_attn"
            };
            format!("model.layers.{l}.{parent}.{}", p.module_name())
        };
        match *name {
            TensorName::Embed => "model.embed_tokens.weight".into(),
            TensorName::FinalNorm => "model.norm.weight".into(),
            TensorName::LmHead => "lm_head.weight".into(),
            TensorName::AttnNorm(l) => format!("model.layers.{l}.input_layernorm.weight"),
            TensorName::MlpNorm(l) => format!("model.layers.{l}.post_attention_layernorm.weight"),
            TensorName::Weight(l, p) => format!("{}.weight", module(l, p)),
            TensorName::Bias(l, p) => format!("{}.bias", module(l, p)),
        }
    }
}

impl TensorSource for HfFolder {
    fn get(&mut self, name: &TensorName) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
        let key = Self::hf_name(name);
        match self.index.get(&key) {
            Some(&i) => self.files[i].tensor_f32(&key).map(Some),
            None => Ok(None),
        }
    }

    fn get_native(&mut self, name: &TensorName) -> Result<Option<QMatrix>> {
        let key = Self::hf_name(name);
        match self.index.get(&key) {
            Some(&i) => self.files[i].matrix(&key).map(Some),
            None => Ok(None),
        }
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}
