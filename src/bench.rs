//! `openlora bench`: decode throughput on the real model, batch 1 (base) vs batch N with N
//! distinct random rank-r adapters on all seven projections, measured side by side in one run.
//! Only decode steps are timed (prefill of every sequence is done before the clock starts).

use crate::config::EngineConfig;
use crate::engine::{GenerateRequest, LlmEngine, SamplingParams, SeqId};
use crate::lora::{LoraAdapter, LoraConfig, LoraWeights, Proj};
use crate::model::{Model, ModelConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
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
                adapters: a.iter().map(|a| (a.clone(), 1.0)).collect(),
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
