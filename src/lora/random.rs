//! Random PEFT adapters "as if trained", in memory or written as a PEFT folder: for benchmarks and
//! tests (the weights are small uniform noise, the format is exactly what PEFT writes).

use super::{AdapterId, LoraAdapter, LoraConfig, LoraWeights, Proj, CONFIG_FILE, WEIGHTS_FILE};
use crate::model::ModelConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::path::{Path, PathBuf};

/// A random adapter (rank `r` on all seven projections), as if trained: for benchmarks and tests.
pub fn random_adapter(name: &str, cfg: &ModelConfig, r: usize, seed: u64) -> LoraAdapter {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rand_vec = |n: usize| {
        (0..n)
            .map(|_| rng.random_range(-0.02f32..0.02))
            .collect::<Vec<_>>()
    };
    let config = LoraConfig {
        r,
        alpha: 2.0 * r as f64,
        use_rslora: false,
        target_modules: Proj::ALL.to_vec(),
    };
    let layers = (0..cfg.layers)
        .map(|_| {
            Proj::ALL.map(|p| {
                let (out, inp) = cfg.proj_shape(p);
                Some(LoraWeights {
                    a: rand_vec(r * inp),
                    b: rand_vec(out * r),
                    rank: r,
                    scale: config.scale(r),
                })
            })
        })
        .collect();
    LoraAdapter {
        uid: AdapterId::fresh_in_memory(),
        name: name.into(),
        path: PathBuf::new(),
        config,
        layers,
    }
}

/// Writes a random PEFT adapter folder (`adapter_config.json` + f32 `adapter_model.safetensors`)
/// of rank `r` on `targets` of every layer: for benchmarks and tests of the registry and pager.
pub fn write_random_adapter(
    dir: &Path,
    cfg: &ModelConfig,
    r: usize,
    targets: &[Proj],
    seed: u64,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    std::fs::create_dir_all(dir)?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 2 * r,
        "bias": "none",
        "target_modules": targets.iter().map(|p| p.module_name()).collect::<Vec<_>>(),
    });
    std::fs::write(dir.join(CONFIG_FILE), serde_json::to_vec_pretty(&config)?)?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for l in 0..cfg.layers {
        for &p in targets {
            let (out, inp) = cfg.proj_shape(p);
            let parent = match p {
                Proj::Gate | Proj::Up | Proj::Down => "mlp",
                _ => "self_attn",
            };
            for (ab, shape) in [("A", vec![r, inp]), ("B", vec![out, r])] {
                let bytes: Vec<u8> = (0..shape[0] * shape[1])
                    .flat_map(|_| rng.random_range(-0.05f32..0.05).to_le_bytes())
                    .collect();
                let name = format!(
                    "base_model.model.model.layers.{l}.{parent}.{}.lora_{ab}.weight",
                    p.module_name()
                );
                tensors.push((name, shape, bytes));
            }
        }
    }
    let views = tensors
        .iter()
        .map(|(n, shape, b)| Ok((n.as_str(), TensorView::new(Dtype::F32, shape.clone(), b)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::write(dir.join(WEIGHTS_FILE), safetensors::serialize(views, None)?)?;
    Ok(())
}
