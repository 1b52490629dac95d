//! `openlora bench --pager`: the adapter pager on the real model. (1) TTFT of one rank-r
//! all-projection adapter when its weights are on disk (cold), in host memory (warm) or on device
//! (hot), median of several rounds. (2) Generation throughput with 1, 100 and 1,000 registered
//! adapters whose requests are drawn Zipf(1.0), at a fixed concurrency, as ratios to the
//! single-adapter run. The 1,000 adapters are distinct registrations (own ids, own page-ins and
//! memory) whose folders hard-link one weights file, to keep the disk footprint at one adapter.

use openlora::config::EngineConfig;
use openlora::engine::{GenerateRequest, LlmEngine, SamplingParams, SeqId};
use openlora::lora::{
    write_random_adapter, AdapterPager, AdapterRegistry, AdapterSpec, PagerConfig, Proj,
    CONFIG_FILE, WEIGHTS_FILE,
};
use openlora::metrics::Metrics;
use openlora::model::Model;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Settings of the pager benchmark (from `BenchArgs`).
pub struct PagerBench {
    pub rank: usize,
    pub tokens: usize,
    pub concurrency: usize,
    pub requests: usize,
    pub device_slots: usize,
    pub host_slots: usize,
    /// Interleaved rounds of the throughput runs (best of each kept).
    pub rounds: usize,
}

fn pager(
    model: &Model,
    device_slots: usize,
    host_slots: usize,
) -> anyhow::Result<Arc<AdapterPager>> {
    Ok(Arc::new(AdapterPager::new(
        model.config().clone(),
        PagerConfig {
            device_slots,
            host_slots,
            host_bytes: usize::MAX / 2,
        },
        Arc::new(Metrics::new()),
    )?))
}

fn request(prompt: &[u32], spec: &Arc<AdapterSpec>, tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt_ids: prompt.to_vec(),
        adapters: vec![(spec.clone().into(), 1.0)],
        params: SamplingParams {
            max_tokens: tokens,
            ignore_eos: true,
            ..Default::default()
        },
    }
}

/// Seconds from queueing one request to its first token.
fn ttft(engine: &mut LlmEngine, prompt: &[u32], spec: &Arc<AdapterSpec>) -> anyhow::Result<f64> {
    let start = Instant::now();
    engine.add_request(SeqId(0), request(prompt, spec, 1))?;
    while engine.step().is_empty() {
        if let Some((_, e)) = engine.take_failed().pop() {
            return Err(e.into());
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Registers `n` adapters whose folders share (hard-link) the weights of `src`.
fn register_copies(
    reg: &AdapterRegistry,
    root: &Path,
    src: &Path,
    n: usize,
) -> anyhow::Result<Vec<Arc<AdapterSpec>>> {
    (0..n)
        .map(|i| {
            let d = root.join(format!("copy{i}"));
            std::fs::create_dir_all(&d)?;
            std::fs::copy(src.join(CONFIG_FILE), d.join(CONFIG_FILE))?;
            std::fs::hard_link(src.join(WEIGHTS_FILE), d.join(WEIGHTS_FILE))?;
            reg.register(&format!("copy{i}"), &d)?;
            Ok(reg.spec(&format!("copy{i}")).expect("registered"))
        })
        .collect()
}

/// Generated tokens/s for `b.requests` requests over `specs` drawn Zipf(1.0).
fn zipf_throughput(
    model: &Arc<Model>,
    b: &PagerBench,
    prompt: &[u32],
    specs: &[Arc<AdapterSpec>],
) -> anyhow::Result<(f64, u64)> {
    let pager = pager(model, b.device_slots, b.host_slots)?;
    let cfg = EngineConfig {
        max_num_seqs: b.concurrency,
        ..Default::default()
    };
    let mut engine = LlmEngine::with_pager(model.clone(), cfg, pager.clone())?;
    let mut cdf = Vec::with_capacity(specs.len());
    let mut acc = 0.0;
    for k in 0..specs.len() {
        acc += 1.0 / (k + 1) as f64;
        cdf.push(acc);
    }
    let mut rng = StdRng::seed_from_u64(1);
    let (mut next, mut done, mut in_flight, mut produced) = (0, 0, 0, 0usize);
    let start = Instant::now();
    while done < b.requests {
        while in_flight < b.concurrency && next < b.requests {
            let u = rng.random_range(0.0..acc);
            let k = cdf.partition_point(|&c| c < u).min(specs.len() - 1);
            engine.add_request(SeqId(next as u64), request(prompt, &specs[k], b.tokens))?;
            next += 1;
            in_flight += 1;
        }
        for (_, ev) in engine.step() {
            produced += 1;
            if ev.finish.is_some() {
                done += 1;
                in_flight -= 1;
            }
        }
        if let Some((_, e)) = engine.take_failed().pop() {
            return Err(e.into());
        }
    }
    Ok((
        produced as f64 / start.elapsed().as_secs_f64(),
        pager.stats().device_evictions,
    ))
}

pub fn run(model_path: &Path, b: PagerBench) -> anyhow::Result<()> {
    let model = Arc::new(Model::load(model_path)?);
    let cfg = model.config().clone();
    let root: PathBuf =
        std::env::temp_dir().join(format!("openlora-bench-pager-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let src = root.join("src");
    write_random_adapter(&src, &cfg, b.rank, &Proj::ALL, 42)?;
    let prompt: Vec<u32> = model
        .tokenizer()?
        .encode("Write a short story about a lighthouse keeper.", false)?;
    let reg = AdapterRegistry::new(cfg.clone());
    let specs = register_copies(&reg, &root, &src, 1000)?;
    println!("threads: {}; adapter: rank {} on all 7 projections, {:.1} MiB file, {:.1} MiB compute-ready; prompt {} tokens",
        rayon::current_num_threads(), b.rank, specs[0].file_bytes as f64 / 1048576.0, specs[0].size_bytes as f64 / 1048576.0, prompt.len());

    // (1) TTFT by tier: device budget 1, so running B moves A from device back to host.
    let p = pager(&model, 1, 4)?;
    let mut engine = LlmEngine::with_pager(model.clone(), EngineConfig::default(), p.clone())?;
    let (a, other) = (&specs[0], &specs[1]);
    ttft(&mut engine, &prompt, other)?; // warm-up
    let (mut cold, mut warm, mut hot) = (vec![], vec![], vec![]);
    for _ in 0..5 {
        p.forget(a.id); // back to disk
        cold.push(ttft(&mut engine, &prompt, a)?);
        hot.push(ttft(&mut engine, &prompt, a)?);
        ttft(&mut engine, &prompt, other)?; // evicts A from device; its file stays in host memory
        warm.push(ttft(&mut engine, &prompt, a)?);
    }
    let (cold, warm, hot) = (median(cold), median(warm), median(hot));
    println!("\n| adapter tier at request time | TTFT (median of 5) | vs hot |");
    println!("|---|---|---|");
    for (tier, t) in [
        ("cold (disk)", cold),
        ("warm (host)", warm),
        ("hot (device)", hot),
    ] {
        println!(
            "| {tier} | {:.1} ms | +{:.1} ms |",
            t * 1e3,
            (t - hot) * 1e3
        );
    }
    drop(engine);

    // (2) Throughput, Zipf(1.0) over 1, 100, 1000 adapters; rounds interleaved, best of each
    // kept, so load from other processes on the machine skews the ratios less.
    let sizes = [1, 100, 1000];
    let mut best = [(0.0f64, 0u64); 3];
    for _ in 0..b.rounds {
        for (i, &n) in sizes.iter().enumerate() {
            let (tps, evictions) = zipf_throughput(&model, &b, &prompt, &specs[..n])?;
            if tps > best[i].0 {
                best[i] = (tps, evictions);
            }
        }
    }
    println!(
        "\n| adapters (Zipf 1.0) | tokens/s (best of {}) | ratio to 1 adapter | device evictions |\n|---|---|---|---|",
        b.rounds
    );
    for (&n, &(tps, evictions)) in sizes.iter().zip(&best) {
        println!("| {n} | {tps:.1} | {:.2} | {evictions} |", tps / best[0].0);
    }
    println!(
        "\n(concurrency {}, {} requests x {} tokens, device slots {}, host slots {})",
        b.concurrency, b.requests, b.tokens, b.device_slots, b.host_slots
    );
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
