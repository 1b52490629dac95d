//! What registering an adapter records: its validated `adapter_config.json` and the index of its
//! safetensors header (names, shapes, dtypes), checked against the base model. No weight is read:
//! the header is parsed from a memory map, so registering thousands of adapters is cheap. An
//! `AdapterSpec` that exists is a promise that `LoraAdapter::from_bytes` succeeds on the same file.

use super::{AdapterId, LoraConfig, Proj};
use crate::error::{Error, Result};
use crate::model::ModelConfig;
use safetensors::Dtype;
use std::path::{Path, PathBuf};

/// The file names of a PEFT adapter folder.
pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// A registered adapter: everything but its weights.
#[derive(Debug, Clone)]
pub struct AdapterSpec {
    pub id: AdapterId,
    pub name: String,
    /// The folder holding `adapter_config.json` and `adapter_model.safetensors`.
    pub dir: PathBuf,
    pub config: LoraConfig,
    /// `ranks[layer][proj]`: the rank of that projection's pair, `None` if not adapted.
    pub ranks: Vec<[Option<usize>; 7]>,
    /// Size of the safetensors file (the host-tier footprint).
    pub file_bytes: usize,
    /// Size of the compute-ready f32 layout (the device-tier footprint).
    pub size_bytes: usize,
    /// Weights already in the compute-ready layout (an in-memory adapter: tests, benchmarks);
    /// the pager installs them without reading any file.
    pub preloaded: Option<std::sync::Arc<super::LoraAdapter>>,
}

/// `(layer, proj, is_a)` of a PEFT tensor name, or a clear error. Names look like
/// `...layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}[.{adapter}].weight` (what the regex
/// `layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$` matches),
/// parsed by hand: this runs once per tensor of every adapter registered.
pub(crate) fn parse_tensor_name(
    name: &str,
    layers: usize,
) -> std::result::Result<(usize, Proj, bool), String> {
    let unexpected = || {
        format!(
            "unexpected tensor `{name}` (only lora_A/lora_B of q,k,v,o,gate,up,down are supported)"
        )
    };
    let (layer, module, is_a) = split_tensor_name(name).ok_or_else(unexpected)?;
    let layer: usize = layer
        .parse()
        .map_err(|_| format!("bad layer index in `{name}`"))?;
    let proj = Proj::from_module_name(module)
        .ok_or_else(|| format!("unknown target module `{module}` in `{name}`"))?;
    if layer >= layers {
        return Err(format!(
            "`{name}`: layer {layer} but the base model has {layers} layers"
        ));
    }
    Ok((layer, proj, is_a))
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// (layer digits, module, is_a) of a well-formed name.
fn split_tensor_name(name: &str) -> Option<(&str, &str, bool)> {
    let rest = name.strip_suffix(".weight")?;
    // An optional `.{adapter}` segment ([\w-]+) after lora_A / lora_B.
    let rest = match rest.rsplit_once('.') {
        Some((head, tail))
            if !matches!(tail, "lora_A" | "lora_B")
                && tail
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
                && !tail.is_empty() =>
        {
            head
        }
        _ => rest,
    };
    let (rest, ab) = rest.rsplit_once('.')?;
    let is_a = match ab {
        "lora_A" => true,
        "lora_B" => false,
        _ => return None,
    };
    let (rest, module) = rest.rsplit_once('.')?;
    let rest = rest
        .strip_suffix(".self_attn")
        .or_else(|| rest.strip_suffix(".mlp"))?;
    let (head, layer) = rest.rsplit_once('.')?;
    let ok = is_word(module)
        && !layer.is_empty()
        && layer.chars().all(|c| c.is_ascii_digit())
        && head.ends_with("layers");
    ok.then_some((layer, module, is_a))
}

/// Checks one tensor's shape against the base model; returns its rank.
pub(crate) fn check_shape(
    name: &str,
    shape: &[usize],
    proj: Proj,
    is_a: bool,
    model: &ModelConfig,
) -> std::result::Result<usize, String> {
    let (out, inp) = model.proj_shape(proj);
    match is_a {
        true if shape.len() == 2 && shape[1] == inp && shape[0] > 0 => Ok(shape[0]),
        true => Err(format!("`{name}` has shape {shape:?}, expected [r, {inp}]")),
        false if shape.len() == 2 && shape[0] == out && shape[1] > 0 => Ok(shape[1]),
        false => Err(format!("`{name}` has shape {shape:?}, expected [{out}, r]")),
    }
}

impl AdapterSpec {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    pub fn weights_path(&self) -> PathBuf {
        self.dir.join(WEIGHTS_FILE)
    }

    /// Reads the config and the safetensors header of `dir` and validates both against `model`.
    pub fn read(id: AdapterId, name: &str, dir: &Path, model: &ModelConfig) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "adapter folder not found"),
            ));
        }
        let config = super::LoraAdapter::read_config(dir)?;
        let path = dir.join(WEIGHTS_FILE);
        let file = super::regular_file::open(&path)?;
        // SAFETY: read-only map; only the header is parsed here and no reference outlives `mmap`.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let tensors =
            super::header::read_header(&mmap).map_err(|e| Error::file("safetensors", &path, e))?;
        let ranks =
            Self::index(&tensors, model).map_err(|m| Error::file(WEIGHTS_FILE, &path, m))?;
        let size_bytes = ranks
            .iter()
            .flat_map(|row| Proj::ALL.map(|p| (p, row[p.index()])))
            .filter_map(|(p, r)| r.map(|r| (p, r)))
            .map(|(p, r)| {
                let (out, inp) = model.proj_shape(p);
                (r * inp + out * r) * 4
            })
            .sum();
        Ok(AdapterSpec {
            id,
            name: name.to_string(),
            dir: dir.to_path_buf(),
            config,
            ranks,
            file_bytes: mmap.len(),
            size_bytes,
            preloaded: None,
        })
    }

    /// The spec of an adapter held in memory; its id is the adapter's own `uid`.
    pub fn preloaded(adapter: std::sync::Arc<super::LoraAdapter>) -> Self {
        let ranks = adapter
            .layers
            .iter()
            .map(|row| std::array::from_fn(|p| row[p].as_ref().map(|w| w.rank)))
            .collect();
        AdapterSpec {
            id: adapter.uid,
            name: adapter.name.clone(),
            dir: adapter.path.clone(),
            config: adapter.config.clone(),
            ranks,
            file_bytes: 0,
            size_bytes: adapter.size_bytes(),
            preloaded: Some(adapter),
        }
    }

    /// Validates every tensor of the header; returns `ranks[layer][proj]`.
    fn index(
        tensors: &[super::header::TensorEntry],
        model: &ModelConfig,
    ) -> std::result::Result<Vec<[Option<usize>; 7]>, String> {
        let mut pairs: Vec<[(Option<usize>, Option<usize>); 7]> =
            (0..model.layers).map(|_| Default::default()).collect();
        for t in tensors {
            let name: &str = &t.name;
            let (layer, proj, is_a) = parse_tensor_name(name, model.layers)?;
            if !matches!(t.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                return Err(format!("`{name}` has unsupported dtype {:?}", t.dtype));
            }
            let rank = check_shape(name, &t.shape, proj, is_a, model)?;
            let slot = &mut pairs[layer][proj.index()];
            match is_a {
                true => slot.0 = Some(rank),
                false => slot.1 = Some(rank),
            }
        }
        let mut ranks = Vec::with_capacity(model.layers);
        for (l, row) in pairs.into_iter().enumerate() {
            let mut out = [None; 7];
            for (p, pair) in row.into_iter().enumerate() {
                let m = Proj::ALL[p].module_name();
                out[p] = match pair {
                    (None, None) => None,
                    (Some(a), Some(b)) if a == b => Some(a),
                    (Some(a), Some(b)) => {
                        return Err(format!(
                            "layer {l} {m}: lora_A rank {a} does not match lora_B rank {b}"
                        ))
                    }
                    _ => {
                        return Err(format!(
                            "layer {l} {m}: lora_A and lora_B must both be present"
                        ))
                    }
                };
            }
            ranks.push(out);
        }
        if ranks.iter().all(|r| r.iter().all(Option::is_none)) {
            return Err("no LoRA tensors found".into());
        }
        Ok(ranks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand parser against the regex it replaces (the reference), on names that match and
    /// names that almost do.
    #[test]
    fn tensor_names_parse_as_the_regex_does() {
        let re = regex::Regex::new(
            r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$",
        )
        .unwrap();
        let names = [
            "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.12.mlp.down_proj.lora_B.weight",
            "model.layers.0.self_attn.v_proj.lora_B.default.weight",
            "layers.1.mlp.up_proj.lora_A.my-adapter_2.weight",
            "x.layers.1.mlp.up_proj.lora_A.a.b.weight",
            "model.layers.x.self_attn.q_proj.lora_A.weight",
            "model.layers.1.attn.q_proj.lora_A.weight",
            "model.layers.1.self_attn.q_proj.lora_C.weight",
            "model.layers.1.self_attn.q_proj.lora_A.bias",
            "model.layers.1.self_attn.q-proj.lora_A.weight",
            "model.layers..self_attn.q_proj.lora_A.weight",
            "mylayers.2.mlp.gate_proj.lora_B.weight",
            "lm_head.lora_A.weight",
        ];
        for n in names {
            let ours = split_tensor_name(n);
            let theirs = re.captures(n).map(|c| {
                (
                    c.get(1).unwrap().as_str(),
                    c.get(2).unwrap().as_str(),
                    &c[3] == "A",
                )
            });
            assert_eq!(ours, theirs, "{n}");
        }
    }
}
