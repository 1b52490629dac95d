//! The base model: architecture config, host weights loaded from GGUF or an HF folder (in the
//! format `LoadOptions` asks for), tokenizer, chat template and stop ids. `Model::load_with` is the
//! only constructor, so a `Model` is always complete and consistent (weights match the config,
//! stop ids are in vocab). Running the weights is an executor's job (`exec`), not the model's.

mod chat_template;
mod config;
mod gguf;
mod hf;
mod proj;
pub mod safetensors_file;
mod tokenizer;
mod weights;

mod activation_mode;
pub use activation_mode::ActivationMode;
pub use chat_template::{ChatMessage, ChatTemplate, PromptPiece, CHATML};
pub use config::{Arch, ModelConfig};
pub use proj::Proj;
pub use tokenizer::Tokenizer;
pub use weights::{
    LayerWeights, Linear, LlamaWeights, LoadOptions, TensorName, TensorSource, Weight, WeightDtype,
};

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

pub struct Model {
    /// Served name (file stem or folder name).
    pub name: String,
    pub cfg: ModelConfig,
    pub weights: Arc<LlamaWeights>,
    /// How the weights were loaded (the executor picks its defaults from it).
    pub load_options: LoadOptions,
    pub tokenizer: Option<Tokenizer>,
    pub template: Option<ChatTemplate>,
    /// Token ids that end generation (every EOS id the model declares).
    pub eos_ids: Vec<u32>,
}

/// Tokens that end a turn in common chat formats; added to the stop ids when they are special.
const END_MARKERS: [&str; 4] = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>"];

impl Model {
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Loads a `.gguf` file or an HF folder with the default options (formats as stored).
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, &LoadOptions::default())
    }

    /// Loads a `.gguf` file or an HF folder (`config.json` + safetensors).
    pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model")
            .trim_end_matches(".Q4_1")
            .to_string();
        if path.is_dir() {
            Self::load_hf(path, name, opts)
        } else if path.extension().is_some_and(|e| e == "gguf") {
            Self::load_gguf(path, name, opts)
        } else if !path.exists() {
            Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such model file or folder"),
            ))
        } else {
            Err(Error::file(
                "model",
                path,
                "expected a .gguf file or a folder with config.json",
            ))
        }
    }

    fn load_gguf(path: &Path, name: String, opts: &LoadOptions) -> Result<Self> {
        let mut g = gguf::GgufFile::open(path)?;
        let cfg = g.config()?;
        let tokens = g
            .meta_strings("tokenizer.ggml.tokens")
            .ok_or_else(|| Error::file("gguf", path, "no tokenizer.ggml.tokens"))?;
        let id = |k: &str| g.meta_num(k).map(|x| x as u32);
        let bos = id("tokenizer.ggml.bos_token_id");
        let tokenizer = Tokenizer::from_gguf_parts(
            g.meta_str("tokenizer.ggml.model").unwrap_or(""),
            g.meta_str("tokenizer.ggml.pre").unwrap_or("default"),
            tokens.clone(),
            g.meta_strings("tokenizer.ggml.merges").unwrap_or_default(),
            g.meta_nums("tokenizer.ggml.token_type"),
            bos,
            g.meta_num("tokenizer.ggml.add_bos_token")
                .is_some_and(|x| x != 0.0),
        )?;
        let mut eos_ids: Vec<u32> = ["eos_token_id", "eot_token_id", "eom_token_id"]
            .iter()
            .filter_map(|k| id(&format!("tokenizer.ggml.{k}")))
            .collect();
        eos_ids.extend(
            END_MARKERS
                .iter()
                .filter_map(|m| tokenizer.token_to_id(m))
                .filter(|&i| tokenizer.is_special(i)),
        );
        let tok_str = |i: Option<u32>| {
            i.and_then(|i| tokens.get(i as usize).cloned())
                .unwrap_or_default()
        };
        let eos_str = tok_str(id("tokenizer.ggml.eos_token_id"));
        let template = match g.meta_str("tokenizer.chat_template") {
            Some(src) => Some(ChatTemplate::new(src, &tok_str(bos), &eos_str)?),
            None => None,
        };
        let weights = LlamaWeights::load(&cfg, &mut g, opts)?;
        Ok(Self::finish(
            name,
            cfg,
            (weights, *opts),
            Some(tokenizer),
            template,
            eos_ids,
        ))
    }

    fn load_hf(dir: &Path, name: String, opts: &LoadOptions) -> Result<Self> {
        let cfg = ModelConfig::from_hf(&hf::read_json(&dir.join("config.json"))?)?;
        let tokenizer = match dir.join("tokenizer.json") {
            p if p.exists() => Some(Tokenizer::from_file(&p)?),
            _ => None,
        };
        let tok_cfg = match dir.join("tokenizer_config.json") {
            p if p.exists() => hf::read_json(&p)?,
            _ => Value::Null,
        };
        let token_str = |k: &str| match tok_cfg.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            None => String::new(),
        };
        let (bos, eos) = (token_str("bos_token"), token_str("eos_token"));
        let template_src = match tok_cfg.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(String::from),
            _ => None,
        };
        let template = template_src
            .map(|s| ChatTemplate::new(&s, &bos, &eos))
            .transpose()?;
        let mut eos_ids = Vec::new();
        let gen = dir.join("generation_config.json");
        if gen.exists() {
            match hf::read_json(&gen)?.get("eos_token_id") {
                Some(Value::Number(n)) => eos_ids.extend(n.as_u64().map(|x| x as u32)),
                Some(Value::Array(a)) => {
                    eos_ids.extend(a.iter().filter_map(Value::as_u64).map(|x| x as u32))
                }
                _ => {}
            }
        }
        if let Some(t) = &tokenizer {
            eos_ids.extend(t.token_to_id(&eos));
        }
        let mut src = hf::HfFolder::open(dir)?;
        let weights = LlamaWeights::load(&cfg, &mut src, opts)?;
        Ok(Self::finish(
            name,
            cfg,
            (weights, *opts),
            tokenizer,
            template,
            eos_ids,
        ))
    }

    fn finish(
        name: String,
        cfg: ModelConfig,
        (weights, load_options): (LlamaWeights, LoadOptions),
        tokenizer: Option<Tokenizer>,
        template: Option<ChatTemplate>,
        mut eos_ids: Vec<u32>,
    ) -> Self {
        eos_ids.retain(|&i| (i as usize) < cfg.vocab_size);
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Model {
            name,
            cfg,
            weights: Arc::new(weights),
            load_options,
            tokenizer,
            template,
            eos_ids,
        }
    }

    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| Error::invalid("prompt", "this model has no tokenizer; send token ids"))
    }
}
