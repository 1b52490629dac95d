//! `openlora bench`: decode throughput on the real model, batch 1 (base) vs batch N with N
//! distinct random rank-r adapters on all seven projections, measured side by side in one run.
//! Only decode steps are timed (prefill of every sequence is done before the clock starts), and
//! the runs' engines take decode steps in turn, so the machine's swings hit all of them alike.

use openlora::config::EngineConfig;
use openlora::engine::{GenerateRequest, LlmEngine, SamplingParams, SeqId};
use openlora::exec::LoraDtype;
use openlora::lora::{random_adapter, LoraAdapter};
use openlora::model::Model;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub runtime: super::runtime_args::RuntimeArgs,
    /// Batch size of the multi-adapter run (one distinct adapter per sequence).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// Decode tokens per sequence.
    #[arg(long, default_value_t = 32)]
    pub tokens: usize,
    /// Measure inter-token latency of `--streams` decoding streams while a `--prompt-tokens` prompt
    /// prefills, with and without the step cost bound (see `bench_itl`).
    #[arg(long)]
    pub itl: bool,
    /// ITL mode: decoding streams.
    #[arg(long, default_value_t = 7)]
    pub streams: usize,
    /// ITL mode: length of the prompt that prefills meanwhile.
    #[arg(long, default_value_t = 8000)]
    pub prompt_tokens: usize,
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
    /// Structured outputs: tokens/s of `--batch` streams (distinct adapters), half of them held
    /// to a JSON schema, vs all free, side by side; and the grammar mask cost per token.
    #[arg(long)]
    pub structured: bool,
    /// Interleaved rounds of the throughput runs: pager and structured modes keep the best of
    /// each, the default mode the medians (and the median of the per-round ratios).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
}

/// CPU time of this process so far (ns): the sum of its live threads' run times from
/// `/proc/self/task/*/schedstat` (Linux; `None` elsewhere). Unlike wall time it does not grow
/// while other processes hold the cores, which makes it the steadier cost on a shared machine.
fn cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// One engine of [`decode_interleaved`]: its config and one adapter (or base) per sequence.
type Run<'a> = (&'a EngineConfig, &'a [Option<Arc<LoraAdapter>>]);

/// Decode tokens/s of each run — per wall second and per CPU second (NaN where the CPU time is
/// unknown) — with the runs' engines stepped in turn, one decode step each, so a change in the
/// machine's speed (a shared VM's swings last seconds) hits every run alike.
fn decode_interleaved(
    model: &Arc<Model>,
    runs: &[Run],
    tokens: usize,
) -> anyhow::Result<Vec<(f64, f64)>> {
    let prompt: Vec<u32> = model
        .tokenizer()?
        .encode("Write a short story about a lighthouse keeper.", false)?;
    let mut engines = Vec::new();
    for (cfg, adapters) in runs {
        let mut engine = LlmEngine::new(
            model.clone(),
            EngineConfig {
                max_num_seqs: adapters.len().max(1),
                ..(*cfg).clone()
            },
        )?;
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
        engines.push(engine);
    }
    // (tokens, wall ns, cpu ns) per run.
    let mut spent = vec![(0usize, 0u128, Some(0u64)); runs.len()];
    while engines.iter().any(|e| e.has_work()) {
        for (engine, (n, wall, cpu)) in engines.iter_mut().zip(&mut spent) {
            if !engine.has_work() {
                continue;
            }
            let (start, cpu0) = (Instant::now(), cpu_ns());
            *n += engine.step().len();
            *wall += start.elapsed().as_nanos();
            *cpu = match (*cpu, cpu0, cpu_ns()) {
                (Some(c), Some(a), Some(b)) if b >= a => Some(c + (b - a)),
                _ => None,
            };
        }
    }
    Ok(spent
        .into_iter()
        .map(|(n, wall, cpu)| {
            let per = |ns: f64| n as f64 / (ns * 1e-9);
            (per(wall as f64), cpu.map_or(f64::NAN, |c| per(c as f64)))
        })
        .collect())
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.pager {
        let b = super::bench_pager::PagerBench {
            rank: args.rank,
            tokens: args.tokens,
            concurrency: args.concurrency,
            requests: args.requests,
            device_slots: args.device_slots,
            host_slots: args.host_slots,
            rounds: args.rounds.max(1),
        };
        return super::bench_pager::run(&args.model, b);
    }
    let threads = args.runtime.init_threads()?;
    let model = Arc::new(Model::load_with(
        &args.model,
        &args.runtime.load_options()?,
    )?);
    let kv_dtype = args.runtime.kv_dtype()?;
    if args.structured {
        println!("threads: {threads}");
        return super::bench_structured::run(
            &model,
            kv_dtype,
            args.batch,
            args.rank,
            args.tokens,
            args.rounds.max(1),
        );
    }
    if args.itl {
        println!("threads: {threads}; weights: {}", model.weights.describe());
        return super::bench_itl::run(&model, kv_dtype, args.streams, args.prompt_tokens);
    }
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
    let base = args.runtime.engine_config(EngineConfig::default())?;
    // The adapter read as the config says, and (next to block-quantized weights, where `auto`
    // picks a compact copy) in the other element types too, in the same run.
    let dt = base.lora_dtype.resolve(model.weights.has_quantized());
    let others: Vec<LoraDtype> = match model.weights.has_quantized() {
        true => [LoraDtype::Int8, LoraDtype::BF16, LoraDtype::F32]
            .into_iter()
            .filter(|&d| d != dt)
            .collect(),
        false => vec![],
    };
    let other_cfgs: Vec<EngineConfig> = others
        .iter()
        .map(|&d| EngineConfig {
            lora_dtype: d,
            ..base.clone()
        })
        .collect();
    let mut runs: Vec<Run> = vec![(&base, &[None]), (&base, &adapters[..1])];
    runs.extend(other_cfgs.iter().map(|c| (c, &adapters[..1])));
    runs.push((&base, &adapters));
    decode_interleaved(&model, &runs, 4)?; // warm-up
                                           // Each round steps the runs in turn (see `decode_interleaved`); the ratios are medians of
                                           // the per-round ratios. A row: one (wall, cpu) per run, in `runs`' order.
    let mut rows: Vec<Vec<(f64, f64)>> = Vec::new();
    for _ in 0..args.rounds.max(1) {
        rows.push(decode_interleaved(&model, &runs, args.tokens)?);
    }
    type Row = Vec<(f64, f64)>;
    let med = |f: &dyn Fn(&Row) -> f64| median(rows.iter().map(f).collect());
    let (b1, b1_cpu) = (med(&|r| r[0].0), med(&|r| r[0].1));
    println!(
        "threads: {threads}; device: {}; weights: {}; rounds: {} (medians)",
        base.device,
        model.weights.describe(),
        rows.len()
    );
    println!("| run | tokens/s | ratio to batch 1 | tokens per CPU-s | ratio to batch 1 |");
    println!("|---|---|---|---|---|");
    println!("| batch 1, base | {b1:.1} | 1.00 | {b1_cpu:.1} | 1.00 |");
    let line = |name: String, i: usize| {
        let (v, ratio) = (med(&|r| r[i].0), med(&|r| r[i].0 / r[0].0));
        let (c, c_ratio) = (med(&|r| r[i].1), med(&|r| r[i].1 / r[0].1));
        println!("| {name} | {v:.1} | {ratio:.3} | {c:.1} | {c_ratio:.3} |");
    };
    for (i, d) in std::iter::once(dt)
        .chain(others.iter().copied())
        .enumerate()
    {
        let default = if i == 0 { ", the default" } else { "" };
        line(
            format!(
                "batch 1, 1 adapter (r={}, {}{default})",
                args.rank,
                d.name()
            ),
            1 + i,
        );
    }
    line(
        format!(
            "batch {}, {} distinct adapters (r={})",
            args.batch, args.batch, args.rank
        ),
        runs.len() - 1,
    );
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() % 2 {
        1 => v[v.len() / 2],
        _ => (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0,
    }
}
