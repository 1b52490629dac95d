//! A fine-tuning job's request (`POST /v1/fine_tuning/jobs`), checked once into a `JobSpec`:
//! OpenAI's fields (`model`, `training_file`, `validation_file`, `hyperparameters` or
//! `method: {type: "supervised", supervised: {hyperparameters}}` with `n_epochs`, `batch_size`,
//! `learning_rate_multiplier` — each a number or `"auto"` — `suffix`, `seed`, `metadata`) plus two
//! documented extensions: `lora` (`rank`, `alpha`, `target_modules`, `dropout`) and `datanet`
//! (`id`, `owner`, prices, `fee_split_bps`: the adapter's terms and the datanet its training
//! records become). What always holds: a stored spec has every "auto" resolved and every bound
//! the trainer relies on checked; the learning rate is `BASE_LR x learning_rate_multiplier`.

use crate::error::{Error, Result};
use crate::train::{Decay, LoraSettings, TrainConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The learning rate a multiplier of 1 means (AdamW, PEFT's usual LoRA rate).
pub const BASE_LR: f64 = 2e-4;
pub const MAX_EPOCHS: u64 = 50;
pub const MAX_BATCH: u64 = 256;
const TOP_KEYS: [&str; 11] = [
    "model",
    "training_file",
    "validation_file",
    "hyperparameters",
    "method",
    "suffix",
    "seed",
    "metadata",
    "integrations",
    "lora",
    "datanet",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub target_modules: Vec<String>,
    pub dropout: f64,
}

/// The adapter's terms and the datanet its training records form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatanetSpec {
    pub id: String,
    pub owner: String,
    pub price_per_million_input_tokens: String,
    pub price_per_million_output_tokens: String,
    /// (owner, contributors, operator) in basis points, summing to 10,000.
    pub fee_split_bps: [u16; 3],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub model: String,
    pub training_file: String,
    pub validation_file: Option<String>,
    pub n_epochs: u64,
    pub batch_size: u64,
    pub learning_rate_multiplier: f64,
    pub suffix: Option<String>,
    pub seed: u64,
    pub metadata: Option<Map<String, Value>>,
    pub lora: LoraSpec,
    pub datanet: Option<DatanetSpec>,
}

fn bad(param: &str, msg: impl Into<String>) -> Error {
    Error::invalid(param, msg)
}

/// `"auto"`/absent -> `None`; else the value as `T` or a 400 naming `param`.
fn auto_or<T>(
    v: Option<&Value>,
    param: &str,
    get: impl Fn(&Value) -> Option<T>,
) -> Result<Option<T>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s == "auto" => Ok(None),
        Some(v) => get(v)
            .map(Some)
            .ok_or_else(|| bad(param, "must be \"auto\" or a number")),
    }
}

fn string_field(obj: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(key, "must be a string")),
    }
}

/// What the request names, before the files and model are looked up.
pub struct Requested {
    pub spec: JobSpec,
    /// `batch_size` was "auto" (resolved against the training file's size later).
    pub auto_batch: bool,
}

/// Parses and checks the request body (everything but the files' existence and the model).
pub fn parse(body: &Value) -> Result<Requested> {
    let obj = body
        .as_object()
        .ok_or_else(|| bad("body", "must be a JSON object"))?;
    if let Some(k) = obj.keys().find(|k| !TOP_KEYS.contains(&k.as_str())) {
        return Err(bad(k, "unknown parameter"));
    }
    let model = string_field(obj, "model")?.ok_or_else(|| bad("model", "is required"))?;
    let training_file =
        string_field(obj, "training_file")?.ok_or_else(|| bad("training_file", "is required"))?;
    let validation_file = string_field(obj, "validation_file")?;
    if obj
        .get("integrations")
        .is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
    {
        return Err(Error::unsupported(
            "integrations",
            "no integrations are available",
        ));
    }
    let hp = hyperparameters(obj)?;
    let n_epochs = auto_or(hp.get("n_epochs"), "n_epochs", Value::as_u64)?.unwrap_or(3);
    if !(1..=MAX_EPOCHS).contains(&n_epochs) {
        return Err(bad(
            "n_epochs",
            format!("must be between 1 and {MAX_EPOCHS}"),
        ));
    }
    let batch = auto_or(hp.get("batch_size"), "batch_size", Value::as_u64)?;
    if batch.is_some_and(|b| !(1..=MAX_BATCH).contains(&b)) {
        return Err(bad(
            "batch_size",
            format!("must be between 1 and {MAX_BATCH}"),
        ));
    }
    let lrm = auto_or(
        hp.get("learning_rate_multiplier"),
        "learning_rate_multiplier",
        Value::as_f64,
    )?
    .unwrap_or(1.0);
    if !(lrm.is_finite() && lrm > 0.0 && lrm * BASE_LR <= 0.05) {
        return Err(bad(
            "learning_rate_multiplier",
            format!(
                "must be > 0 and at most {} (the base rate is {BASE_LR})",
                0.05 / BASE_LR
            ),
        ));
    }
    let suffix = string_field(obj, "suffix")?;
    if let Some(s) = &suffix {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(bad(
                "suffix",
                "must be 1 to 64 characters from A-Z a-z 0-9 - _ .",
            ));
        }
    }
    let seed = match obj.get("seed") {
        None | Some(Value::Null) => rand::random::<u32>() as u64 >> 1,
        Some(v) => v
            .as_u64()
            .filter(|s| *s <= i32::MAX as u64)
            .ok_or_else(|| bad("seed", "must be an integer between 0 and 2147483647"))?,
    };
    let metadata = metadata(obj.get("metadata"))?;
    let spec = JobSpec {
        model,
        training_file,
        validation_file,
        n_epochs,
        batch_size: batch.unwrap_or(4),
        learning_rate_multiplier: lrm,
        suffix,
        seed,
        metadata,
        lora: lora(obj.get("lora"))?,
        datanet: obj
            .get("datanet")
            .filter(|v| !v.is_null())
            .map(datanet)
            .transpose()?,
    };
    Ok(Requested {
        spec,
        auto_batch: batch.is_none(),
    })
}

/// `hyperparameters`, or `method.supervised.hyperparameters` (not both).
fn hyperparameters(obj: &Map<String, Value>) -> Result<Map<String, Value>> {
    let top = obj.get("hyperparameters").filter(|v| !v.is_null());
    let method = obj.get("method").filter(|v| !v.is_null());
    let from_method = match method {
        None => None,
        Some(m) => {
            let t = m.get("type").and_then(Value::as_str);
            if t != Some("supervised") {
                return Err(Error::unsupported(
                    "method.type",
                    "only \"supervised\" fine-tuning is available",
                ));
            }
            m.get("supervised")
                .and_then(|s| s.get("hyperparameters"))
                .filter(|v| !v.is_null())
        }
    };
    if top.is_some() && from_method.is_some() {
        return Err(bad(
            "hyperparameters",
            "give hyperparameters or method.supervised.hyperparameters, not both",
        ));
    }
    let hp = match top.or(from_method) {
        None => return Ok(Map::new()),
        Some(v) => v
            .as_object()
            .ok_or_else(|| bad("hyperparameters", "must be an object"))?,
    };
    const KNOWN: [&str; 3] = ["n_epochs", "batch_size", "learning_rate_multiplier"];
    if let Some(k) = hp.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(bad(
            &format!("hyperparameters.{k}"),
            "unknown hyper-parameter",
        ));
    }
    Ok(hp.clone())
}

fn metadata(v: Option<&Value>) -> Result<Option<Map<String, Value>>> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let m = v
        .as_object()
        .ok_or_else(|| bad("metadata", "must be an object of strings"))?;
    let ok = m.len() <= 16
        && m.iter()
            .all(|(k, v)| k.len() <= 64 && v.as_str().is_some_and(|s| s.len() <= 512));
    if !ok {
        return Err(bad(
            "metadata",
            "at most 16 keys of up to 64 characters, values strings of up to 512",
        ));
    }
    Ok(Some(m.clone()))
}

fn lora(v: Option<&Value>) -> Result<LoraSpec> {
    let mut spec = LoraSpec {
        rank: 8,
        alpha: 16.0,
        target_modules: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        .map(String::from)
        .to_vec(),
        dropout: 0.05,
    };
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(spec);
    };
    let o = v
        .as_object()
        .ok_or_else(|| bad("lora", "must be an object"))?;
    for (k, x) in o {
        match k.as_str() {
            "rank" => {
                spec.rank = x
                    .as_u64()
                    .ok_or_else(|| bad("lora.rank", "must be an integer"))?
                    as usize
            }
            "alpha" => {
                spec.alpha = x
                    .as_f64()
                    .ok_or_else(|| bad("lora.alpha", "must be a number"))?
            }
            "dropout" => {
                spec.dropout = x
                    .as_f64()
                    .ok_or_else(|| bad("lora.dropout", "must be a number"))?
            }
            "target_modules" => {
                let names = x
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|s| s.as_str().map(String::from))
                            .collect::<Option<Vec<_>>>()
                    })
                    .ok_or_else(|| {
                        bad("lora.target_modules", "must be an array of module names")
                    })?;
                spec.target_modules = names;
            }
            other => {
                return Err(bad(
                    &format!("lora.{other}"),
                    "unknown LoRA setting (rank, alpha, target_modules, dropout)",
                ))
            }
        }
    }
    spec.settings()?;
    Ok(spec)
}

fn datanet(v: &Value) -> Result<DatanetSpec> {
    let o = v
        .as_object()
        .ok_or_else(|| bad("datanet", "must be an object"))?;
    let s = |k: &str| o.get(k).and_then(Value::as_str).map(String::from);
    let id = s("id").ok_or_else(|| bad("datanet.id", "is required"))?;
    let id_ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with('.');
    if !id_ok {
        return Err(bad(
            "datanet.id",
            "must be 1 to 64 characters from A-Z a-z 0-9 - _ .",
        ));
    }
    let owner = s("owner")
        .ok_or_else(|| bad("datanet.owner", "is required (the adapter owner's address)"))?;
    match owner.parse::<alloy::primitives::Address>() {
        Ok(a) if !a.is_zero() => {}
        _ => return Err(bad("datanet.owner", "must be a non-zero 0x address")),
    }
    let price = |k: &str| -> Result<String> {
        let p = match o.get(k) {
            None | Some(Value::Null) => "0".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(bad(
                    &format!("datanet.{k}"),
                    "must be a decimal string of wei",
                ))
            }
        };
        p.parse::<alloy::primitives::U256>()
            .map_err(|_| bad(&format!("datanet.{k}"), "must be a decimal string of wei"))?;
        Ok(p)
    };
    let split = o.get("fee_split_bps").ok_or_else(|| {
        bad(
            "datanet.fee_split_bps",
            "is required: {owner, contributors, operator}",
        )
    })?;
    let part = |k: &str| {
        split
            .get(k)
            .and_then(Value::as_u64)
            .filter(|x| *x <= 10_000)
            .map(|x| x as u16)
    };
    let parts = match (part("owner"), part("contributors"), part("operator")) {
        (Some(a), Some(b), Some(c)) if a as u32 + b as u32 + c as u32 == 10_000 => [a, b, c],
        _ => {
            return Err(bad(
                "datanet.fee_split_bps",
                "owner, contributors and operator must sum to 10000",
            ))
        }
    };
    Ok(DatanetSpec {
        id,
        owner,
        price_per_million_input_tokens: price("price_per_million_input_tokens")?,
        price_per_million_output_tokens: price("price_per_million_output_tokens")?,
        fee_split_bps: parts,
    })
}

impl LoraSpec {
    pub fn settings(&self) -> Result<LoraSettings> {
        let targets = LoraSettings::parse_targets(&self.target_modules.join(","))
            .map_err(|e| bad("lora.target_modules", e.to_string()))?;
        LoraSettings {
            rank: self.rank,
            alpha: self.alpha,
            targets,
            dropout: self.dropout as f32,
        }
        .checked()
        .map_err(|e| match e {
            Error::InvalidRequest { param, message } => bad(&format!("lora.{param}"), message),
            e => e,
        })
    }
}

impl JobSpec {
    /// The trainer's settings; `steps` (optimizer steps of the whole run) sets the checkpoint
    /// cadence: about ten checkpoints a run, at least one a step apart.
    pub fn train_config(&self, examples: usize) -> Result<TrainConfig> {
        let mut cfg = TrainConfig::new(self.lora.settings()?);
        cfg.epochs = self.n_epochs as usize;
        cfg.batch_size = self.batch_size as usize;
        cfg.lr = BASE_LR * self.learning_rate_multiplier;
        cfg.decay = Decay::Linear;
        cfg.seed = self.seed;
        let steps = examples.div_ceil(cfg.batch_size) * cfg.epochs;
        cfg.checkpoint_every = steps.div_ceil(10).max(1);
        cfg.checked()
    }

    /// The OpenAI `hyperparameters` object of this job.
    pub fn hyperparameters(&self) -> Value {
        serde_json::json!({
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn param_of(v: Value) -> String {
        match parse(&v) {
            Err(Error::InvalidRequest { param, .. }) => param,
            Err(Error::Unsupported { field, .. }) => field,
            other => panic!("{v}: {:?}", other.map(|r| r.spec)),
        }
    }

    #[test]
    fn both_hyperparameter_forms_and_auto() {
        let a = parse(&json!({"model": "m", "training_file": "f", "hyperparameters": {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 5}})).unwrap();
        let b = parse(&json!({"model": "m", "training_file": "f", "seed": a.spec.seed,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "learning_rate_multiplier": 5.0}}}})).unwrap();
        assert_eq!(a.spec, b.spec);
        assert!(a.auto_batch && b.auto_batch);
        assert_eq!(a.spec.n_epochs, 2);
        let cfg = a.spec.train_config(32).unwrap();
        assert!((cfg.lr - 5.0 * BASE_LR).abs() < 1e-12);
        assert_eq!(cfg.lora.targets.len(), 7);
    }

    #[test]
    fn impossible_requests_name_their_parameter() {
        let base = json!({"model": "m", "training_file": "f"});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        assert_eq!(param_of(json!({"training_file": "f"})), "model");
        assert_eq!(
            param_of(with("hyperparameters", json!({"n_epochs": 0}))),
            "n_epochs"
        );
        assert_eq!(
            param_of(with("hyperparameters", json!({"batch_size": 100000}))),
            "batch_size"
        );
        assert_eq!(
            param_of(with(
                "hyperparameters",
                json!({"learning_rate_multiplier": -1})
            )),
            "learning_rate_multiplier"
        );
        assert_eq!(
            param_of(with("hyperparameters", json!({"epochs": 2}))),
            "hyperparameters.epochs"
        );
        assert_eq!(
            param_of(with("method", json!({"type": "dpo"}))),
            "method.type"
        );
        assert_eq!(param_of(with("suffix", json!("a:b"))), "suffix");
        assert_eq!(param_of(with("lora", json!({"rank": 0}))), "lora.rank");
        assert_eq!(
            param_of(with("lora", json!({"target_modules": ["qq"]}))),
            "lora.target_modules"
        );
        assert_eq!(
            param_of(with(
                "datanet",
                json!({"id": "d", "owner": "0x0000000000000000000000000000000000000000", "fee_split_bps": {}})
            )),
            "datanet.owner"
        );
        assert_eq!(param_of(with("bogus", json!(1))), "bogus");
    }
}
