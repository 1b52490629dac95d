//! `openlora bench`: decode throughput on the real model, batch 1 (base) vs batch N with N
//! distinct random rank-r adapters on all seven projections, measured side by side in one run.
//! Only decode steps are timed (prefill of every sequence is done before the clock starts).

use crate::config::EngineConfig;
use crate::engine::{GenerateRequest, LlmEngine, SamplingParams, SeqId};
use crate::lora::{LoraAdapter, LoraConfig, LoraWeights, Proj, CONFIG_FILE, WEIGHTS_FILE};
use crate::model::{Model, ModelConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Batch size of the multi-adapter run (one distinct adapter per sequence).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// Decode tokens per sequence.
    #[arg(long, default_value_t = 32)]
    pub tokens: usize,
    /// Benchmark the adapter pager instead: TTFT by tier, and throughput with 1/100/1000
    /// adapters under Zipf(1.0) (see `bench_pager`).
    #[arg(long)]
    pub pager: bool,
    /// Pager mode: requests in flight.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Pager mode: requests per throughput run.
    #[arg(long, default_value_t = 64)]
    pub requests: usize,
    /// Pager mode: device-tier slots.
    #[arg(long, default_value_t = 32)]
    pub device_slots: usize,
    /// Pager mode: host-tier slots.
    #[arg(long, default_value_t = 64)]
    pub host_slots: usize,
    /// Pager mode: interleaved rounds of the throughput runs (best of each kept).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
}

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

/// Decode tokens/s for `n` sequences, each with `adapters[i]` (or base when `None`).
fn decode_throughput(
    model: &Arc<Model>,
    adapters: &[Option<Arc<LoraAdapter>>],
    tokens: usize,
) -> anyhow::Result<f64> {
    let mut engine = LlmEngine::new(
        model.clone(),
        EngineConfig {
            max_num_seqs: adapters.len().max(1),
            ..Default::default()
        },
    )?;
    let prompt: Vec<u32> = model
        .tokenizer()?
        .encode("Write a short story about a lighthouse keeper.", false)?;
    for (i, a) in adapters.iter().enumerate() {
        let params = SamplingParams {
            max_tokens: tokens + 1,
            ignore_eos: true,
            ..Default::default()
        };
        engine.add_request(
            SeqId(i as u64),
            GenerateRequest {
                prompt_ids: prompt.clone(),
                adapters: a.iter().map(|a| (a.clone().into(), 1.0)).collect(),
                params,
            },
        )?;
    }
    engine.step(); // prefill every sequence (first token)
    let start = Instant::now();
    let mut produced = 0;
    while engine.has_work() {
        produced += engine.step().len();
    }
    Ok(produced as f64 / start.elapsed().as_secs_f64())
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.pager {
        let b = crate::bench_pager::PagerBench {
            rank: args.rank,
            tokens: args.tokens,
            concurrency: args.concurrency,
            requests: args.requests,
            device_slots: args.device_slots,
            host_slots: args.host_slots,
            rounds: args.rounds.max(1),
        };
        return crate::bench_pager::run(&args.model, b);
    }
    let model = Arc::new(Model::load(&args.model)?);
    let cfg = model.config().clone();
    let adapters: Vec<Option<Arc<LoraAdapter>>> = (0..args.batch)
        .map(|i| {
            Some(Arc::new(random_adapter(
                &format!("bench{i}"),
                &cfg,
                args.rank,
                i as u64,
            )))
        })
        .collect();
    decode_throughput(&model, &[None], 4)?; // warm-up
    let b1 = decode_throughput(&model, &[None], args.tokens)?;
    let b1_lora = decode_throughput(&model, &adapters[..1], args.tokens)?;
    let bn = decode_throughput(&model, &adapters, args.tokens)?;
    println!("threads: {}", rayon::current_num_threads());
    println!("| run | tokens/s | ratio to batch 1 |");
    println!("|---|---|---|");
    println!("| batch 1, base | {b1:.1} | 1.00 |");
    println!(
        "| batch 1, 1 adapter (r={}) | {b1_lora:.1} | {:.2} |",
        args.rank,
        b1_lora / b1
    );
    println!(
        "| batch {}, {} distinct adapters (r={}) | {bn:.1} | {:.2} |",
        args.batch,
        args.batch,
        args.rank,
        bn / b1
    );
    Ok(())
}
