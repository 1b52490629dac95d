//! `openlora bench-device` (hidden): the device executor's own benchmark rows for the GPU run
//! (scripts/gpu-run.sh stage d), on a model shape with random weights made on the device (no file):
//!   * memory copy bandwidth (device to device, bytes read + written), the roofline's denominator;
//!   * decode step time at each `--batches` size vs the roofline (bytes one step must read —
//!     weights and the rows' KV — over that bandwidth);
//!   * decode tokens/s with 0 (none, measured first and last), and each `--adapters` count of
//!     rank-`--rank` adapters drawn Zipf(1.0), page-ins of cold adapters inside the timed region;
//!   * cold page-in time of one adapter (p50, p90).
//! Writes JSON (`--out`) that scripts/gpu_bench.py `targets` compares with the transformers+PEFT
//! peer. On `--device candle-cpu` (CI) with `--shape tiny` it rehearses in seconds: twin figures
//! there are no GPU claims.

use super::bench_device_plan::{blocks_per_seq, Workload};
use openlora::exec::device::DeviceExecutor;
use openlora::exec::{DeviceKind, ExecConfig, Executor, KvDtype, LoraDtype};
use openlora::lora::{random_adapter, AdapterSlot, SlotTable};
use openlora::model::ModelConfig;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchDeviceArgs {
    /// `cuda`, `cuda:N` or `candle-cpu` (the twin, f32).
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// `llama3-8b` (Llama-3-8B: 32 layers, hidden 4096, GQA 32/8, vocab 128256) or `tiny`.
    #[arg(long, default_value = "llama3-8b")]
    pub shape: String,
    /// Override the shape's layer count (a shorter run; the roofline scales with it).
    #[arg(long)]
    pub layers: Option<usize>,
    /// `bf16` (the GPU default) or `f32` (the twin is always f32).
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    #[arg(long, default_value = "1,32,128", value_delimiter = ',')]
    pub batches: Vec<usize>,
    /// Adapter counts of the throughput runs (each vs no adapters, side by side).
    #[arg(long, default_value = "1,100,1000", value_delimiter = ',')]
    pub adapters: Vec<usize>,
    /// Batch sizes of the adapter throughput runs.
    #[arg(long, default_value = "32,128", value_delimiter = ',')]
    pub adapter_batches: Vec<usize>,
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// Device adapter slots (at least the largest adapter batch).
    #[arg(long, default_value_t = 128)]
    pub slots: usize,
    /// Context tokens each decoding row attends over.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Timed decode steps per measurement (after 3 warm-up steps).
    #[arg(long, default_value_t = 32)]
    pub steps: usize,
    /// Tokens a request decodes before a new request (a new Zipf draw) takes its row.
    #[arg(long, default_value_t = 256)]
    pub lifetime: usize,
    /// Cold page-ins timed for the p50.
    #[arg(long, default_value_t = 16)]
    pub page_ins: usize,
    /// Distinct host weight sets behind the adapters (each id reuses one; the copy is the same).
    #[arg(long, default_value_t = 4)]
    pub host_adapters: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the JSON goes (also printed).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn shape(name: &str, layers: Option<usize>) -> anyhow::Result<ModelConfig> {
    let mut v = match name {
        "llama3-8b" => json!({"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "rope_theta": 500000.0, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": false}),
        "tiny" => json!({"model_type": "llama", "vocab_size": 512, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": false}),
        other => anyhow::bail!("--shape {other}: expected llama3-8b or tiny"),
    };
    if let Some(l) = layers {
        v["num_hidden_layers"] = json!(l);
    }
    Ok(ModelConfig::from_hf(&v)?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Device-to-device copy bandwidth in bytes/s (read + write), median of 10 copies.
fn copy_bandwidth(
    ex: &DeviceExecutor,
    elems: usize,
    dt: candle_core::DType,
) -> anyhow::Result<f64> {
    let a = candle_core::Tensor::ones(elems, dt, ex.device())?;
    let bytes = 2.0 * (elems * dt.size_in_bytes()) as f64;
    let mut t = Vec::new();
    for i in 0..13 {
        ex.synchronize()?;
        let s = Instant::now();
        let b = a.copy()?;
        ex.synchronize()?;
        drop(b);
        if i >= 3 {
            t.push(s.elapsed().as_secs_f64());
        }
    }
    Ok(bytes / median(t))
}

/// Runs `steps` steps of `w` after 3 warm-up steps: (median step seconds, tokens/s, fills timed).
fn run(
    ex: &mut DeviceExecutor,
    w: &mut Workload,
    table: &SlotTable,
    steps: usize,
) -> anyhow::Result<(f64, f64, u64)> {
    for _ in 0..3 {
        ex.step(&w.next_plan(table))?;
    }
    let fills = w.fills;
    let mut t = Vec::with_capacity(steps);
    let start = Instant::now();
    for _ in 0..steps {
        let plan = w.next_plan(table);
        let s = Instant::now();
        ex.step(&plan)?;
        t.push(s.elapsed().as_secs_f64());
    }
    let tps = (w.batch * steps) as f64 / start.elapsed().as_secs_f64();
    Ok((median(t), tps, w.fills - fills))
}

pub fn bench_device(a: BenchDeviceArgs) -> anyhow::Result<()> {
    let m = shape(&a.shape, a.layers)?;
    let kind = DeviceKind::parse(&a.device)?;
    let dev = match kind {
        DeviceKind::Cuda(n) => openlora::exec::device::open_device(Some(n))?,
        DeviceKind::CandleCpu => openlora::exec::device::open_device(None)?,
        _ => anyhow::bail!("--device: cuda, cuda:N or candle-cpu"),
    };
    let dtype = match (dev.is_cpu(), a.dtype.as_str()) {
        (true, _) | (false, "f32") => candle_core::DType::F32,
        (false, "bf16") => candle_core::DType::BF16,
        (_, other) => anyhow::bail!("--dtype {other}: expected bf16 or f32"),
    };
    let max_batch = a
        .batches
        .iter()
        .chain(&a.adapter_batches)
        .copied()
        .max()
        .unwrap_or(1);
    anyhow::ensure!(
        a.slots >= max_batch,
        "--slots must be at least the largest batch ({max_batch})"
    );
    let block_size = 16;
    let cfg = ExecConfig {
        num_blocks: max_batch * blocks_per_seq(a.ctx, block_size),
        block_size,
        kv_dtype: KvDtype::Auto,
        device: kind,
        max_lora_rank: a.rank,
        lora_dtype: LoraDtype::default(),
        qmatmul: false,
    };
    let table = Arc::new(SlotTable::new(a.slots));
    let made = Instant::now();
    let mut ex = DeviceExecutor::random(&m, &cfg, table.clone(), dev.clone(), dtype, a.seed)?;
    ex.synchronize()?;
    eprintln!(
        "{} (random weights made in {:.1}s)",
        ex.describe(),
        made.elapsed().as_secs_f64()
    );
    // 1 GiB of copy on a GPU (several times any L2); 64 MiB on the twin.
    let elems = if dev.is_cpu() { 16 << 20 } else { 256 << 20 } * 4 / dtype.size_in_bytes();
    let bw = copy_bandwidth(&ex, elems, dtype)?;
    eprintln!("copy bandwidth {:.1} GB/s", bw / 1e9);
    // A decode step reads every projection and the LM head once (the embedding: one row each).
    let read = ex.weight_bytes()
        - m.vocab_size * m.hidden * dtype.size_in_bytes() * usize::from(!m.tie_embeddings);
    let kv = if dev.is_cpu() || dtype == candle_core::DType::F32 {
        KvDtype::F32
    } else {
        KvDtype::BF16
    };
    let kv_token = kv.bytes_per_token(&m);
    let host: Vec<_> = (0..a.host_adapters.max(1))
        .map(|i| {
            Arc::new(random_adapter(
                &format!("h{i}"),
                &m,
                a.rank,
                a.seed + i as u64,
            ))
        })
        .collect();
    let mut report = json!({
        "device": format!("{:?}", dev.location()), "dtype": format!("{dtype:?}"),
        "shape": a.shape, "layers": m.layers, "ctx": a.ctx, "rank": a.rank, "slots": a.slots,
        "steps": a.steps, "lifetime": a.lifetime, "weight_bytes": ex.weight_bytes(),
        "weight_bytes_per_step": read, "copy_bandwidth_bytes_per_s": bw,
        "decode": [], "page_in": null, "adapter_throughput": [],
    });
    let mut bench = Bench {
        ex: &mut ex,
        table: &table,
        host,
        args: &a,
        vocab: m.vocab_size,
        block_size,
    };
    // Written after every measurement: a run stopped by its time limit keeps what it measured.
    for &b in &a.batches {
        let (step_s, tps, _) = bench.run(b, 0)?;
        let roof = (read + b * a.ctx * kv_token) as f64 / bw;
        eprintln!(
            "decode batch {b}: {:.3} ms/step, {tps:.0} tok/s, roofline {:.3} ms ({:.0}%)",
            step_s * 1e3,
            roof * 1e3,
            100.0 * roof / step_s
        );
        push(
            &mut report,
            "decode",
            json!({"batch": b, "step_ms": step_s * 1e3,
            "tokens_per_s": tps, "roofline_ms": roof * 1e3, "roofline_fraction": roof / step_s}),
        );
        save(&report, &a.out)?;
    }
    report["page_in"] = page_ins(bench.ex, &table, &bench.host, a.page_ins)?;
    save(&report, &a.out)?;
    for &b in &a.adapter_batches {
        // No adapters first and last: their spread says how much of a ratio is noise.
        let counts = std::iter::once(0)
            .chain(a.adapters.iter().copied())
            .chain([0]);
        for n in counts {
            let (step_s, tps, fills) = bench.run(b, n)?;
            eprintln!("batch {b}, {n} adapters: {tps:.0} tok/s ({fills} page-ins timed)");
            push(
                &mut report,
                "adapter_throughput",
                json!({"batch": b, "adapters": n,
                "tokens_per_s": tps, "step_ms": step_s * 1e3, "page_ins": fills}),
            );
            save(&report, &a.out)?;
        }
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn push(report: &mut Value, key: &str, row: Value) {
    if let Some(list) = report[key].as_array_mut() {
        list.push(row);
    }
}

fn save(report: &Value, out: &Option<PathBuf>) -> anyhow::Result<()> {
    if let Some(p) = out {
        std::fs::write(p, serde_json::to_string_pretty(report)? + "\n")?;
    }
    Ok(())
}

/// What every measurement shares: the executor, its slot table, the host adapters.
struct Bench<'a> {
    ex: &'a mut DeviceExecutor,
    table: &'a SlotTable,
    host: Vec<Arc<openlora::lora::LoraAdapter>>,
    args: &'a BenchDeviceArgs,
    vocab: usize,
    block_size: usize,
}

impl Bench<'_> {
    /// Batch `b` with `n` Zipf adapters (0: none): (median step s, tokens/s, page-ins timed).
    fn run(&mut self, b: usize, n: usize) -> anyhow::Result<(f64, f64, u64)> {
        let a = self.args;
        let shape = (a.ctx, self.block_size, a.lifetime, self.vocab);
        let mut w = Workload::new(b, shape, n, self.host.clone(), a.seed + n as u64);
        run(self.ex, &mut w, self.table, a.steps)
    }
}

/// Times `n` cold page-ins (a fresh occupant in slot 0, copied in and waited for): ms p50/p90.
fn page_ins(
    ex: &mut DeviceExecutor,
    table: &SlotTable,
    host: &[Arc<openlora::lora::LoraAdapter>],
    n: usize,
) -> anyhow::Result<Value> {
    let slot = AdapterSlot(0);
    let mut t = Vec::with_capacity(n);
    for i in 0..n.max(1) + 2 {
        table.clear(slot);
        table.fill(slot, host[i % host.len()].clone());
        let s = Instant::now();
        ex.page_in(slot)?;
        if i >= 2 {
            t.push(s.elapsed().as_secs_f64() * 1e3);
        }
    }
    let bytes = host[0].size_bytes();
    Ok(
        json!({"p50_ms": pct(t.clone(), 0.5), "p90_ms": pct(t, 0.9), "count": n.max(1),
        "host_bytes": bytes}),
    )
}
