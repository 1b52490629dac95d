//! `openlora compare-devices` (hidden): the device executor (`--device cuda` on the GPU run's stage
//! b; `candle-cpu` in CI) against the CPU f32 executor, the exact reference, on one model and its
//! adapters:
//!   * logits: one prefill step of 36 prompts in one batch (base rows, each adapter, a weighted
//!     mix) on both executors: max |Δ|, ‖Δ‖/‖ref‖ and rows whose argmax differs;
//!   * greedy tokens of the base model alone, and of the 36 requests as one mixed batch.
//! With `--dtype f32` the tokens must be equal (exit 1 otherwise); with `bf16` the first divergence
//! is reported, not failed. Writes JSON (`--out`).

use openlora::config::EngineConfig;
use openlora::engine::{GenerateRequest, LlmEngine, SamplingParams, SeqId};
use openlora::exec::{DeviceKind, ExecConfig, KvDtype, StepPlan};
use openlora::lora::{AdapterRegistry, AdapterSlot, LoraAdapter, SlotTable};
use openlora::model::{LoadOptions, Model, WeightDtype};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divergence_and_logit_errors_see_a_difference() {
        let r = vec![vec![1, 2, 3], vec![4, 5, 6]];
        assert!(first_divergence(&r, &r).is_null());
        let t = vec![vec![1, 2, 3], vec![4, 9, 6]];
        assert_eq!(first_divergence(&r, &t), json!({"request": 1, "token": 1}));
        let t = vec![vec![1, 2, 3], vec![4, 5]];
        assert_eq!(first_divergence(&r, &t), json!({"request": 1, "token": 2}));
        // Two rows of a vocab of 3: the second row's argmax moves, the largest error is 0.5.
        let e = logit_errors(
            &[0.0, 1.0, 0.0, 2.0, 0.0, 0.0],
            &[0.0, 1.0, 0.0, 0.0, 0.5, 0.0],
            3,
        );
        assert_eq!(e["argmax_rows_differ"], 1);
        assert_eq!(e["max_abs"], 2.0);
        assert!(logit_errors(&[1.0], &[f32::NAN], 1)["max_abs"]
            .as_f64()
            .is_none_or(f64::is_infinite));
    }
}

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// An HF model folder or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// `name=dir` of a PEFT adapter folder; repeatable.
    #[arg(long = "adapter")]
    pub adapters: Vec<String>,
    /// The device executor under test: `cuda`, `cuda:N` or `candle-cpu`.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// `f32` (tokens must equal the reference's) or `bf16` (divergence reported).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Greedy tokens per request.
    #[arg(long, default_value_t = 16)]
    pub tokens: usize,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

type Mix = Vec<(Arc<LoraAdapter>, f32)>;
const REQUESTS: usize = 36;

/// Prompt `i` of the batch: 1..=23 token ids below `vocab`.
fn prompt(i: usize, vocab: usize) -> Vec<u32> {
    let len = 1 + (i * 5) % 23;
    (0..len)
        .map(|j| ((i * 131 + j * 17 + 3) % vocab.min(4000)) as u32)
        .collect()
}

fn mixes(adapters: &[Arc<LoraAdapter>]) -> Vec<Mix> {
    let mut m: Vec<Mix> = vec![vec![]];
    m.extend(adapters.iter().map(|a| vec![(a.clone(), 1.0)]));
    if adapters.len() >= 2 {
        m.push(vec![(adapters[0].clone(), 0.5), (adapters[1].clone(), 0.7)]);
    }
    m
}

/// Greedy tokens of `reqs` run together in one engine on `device`.
fn generate(
    model: &Arc<Model>,
    device: DeviceKind,
    reqs: &[GenerateRequest],
) -> anyhow::Result<Vec<Vec<u32>>> {
    let cfg = EngineConfig {
        device,
        max_num_seqs: REQUESTS,
        ..Default::default()
    };
    let mut engine = LlmEngine::new(model.clone(), cfg)?;
    for (i, r) in reqs.iter().enumerate() {
        engine.add_request(SeqId(i as u64), r.clone())?;
    }
    let mut out: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut steps = 0;
    while engine.has_work() {
        for (id, ev) in engine.step() {
            out.entry(id.0).or_default().extend(ev.token);
        }
        if let Some((_, e)) = engine.take_failed().into_iter().next() {
            anyhow::bail!("{device}: {e}");
        }
        steps += 1;
        anyhow::ensure!(steps < 100_000, "{device}: the engine did not finish");
    }
    Ok((0..reqs.len())
        .map(|i| out.remove(&(i as u64)).unwrap_or_default())
        .collect())
}

/// Last-row logits of every prompt, all in one prefill step of the executor `device` names.
fn prefill_logits(
    model: &Arc<Model>,
    device: DeviceKind,
    mixes: &[Mix],
) -> anyhow::Result<Vec<f32>> {
    let m = model.config();
    let bs = 16;
    let prompts: Vec<Vec<u32>> = (0..REQUESTS).map(|i| prompt(i, m.vocab_size)).collect();
    let per_seq = 23usize.div_ceil(bs);
    let slots = Arc::new(SlotTable::new(mixes.len().max(1)));
    let adapters: Vec<&Arc<LoraAdapter>> = mixes.iter().flatten().map(|(a, _)| a).collect();
    let mut uniq: Vec<&Arc<LoraAdapter>> = Vec::new();
    for a in adapters {
        if !uniq.iter().any(|u| Arc::ptr_eq(u, a)) {
            slots.fill(AdapterSlot(uniq.len() as u32), a.clone());
            uniq.push(a);
        }
    }
    let slot_of = |a: &Arc<LoraAdapter>| {
        AdapterSlot(uniq.iter().position(|u| Arc::ptr_eq(u, a)).unwrap_or(0) as u32)
    };
    let cfg = ExecConfig {
        num_blocks: REQUESTS * per_seq,
        block_size: bs,
        kv_dtype: KvDtype::Auto,
        device,
        max_lora_rank: 64,
        lora_dtype: Default::default(),
        qmatmul: false,
    };
    let mut ex = openlora::exec::create(model, &cfg, slots)?;
    let mut plan = StepPlan::default();
    for (i, p) in prompts.iter().enumerate() {
        let table: Vec<u32> = (0..per_seq).map(|b| (i * per_seq + b) as u32).collect();
        let mix: Vec<(AdapterSlot, f32)> = mixes[i % mixes.len()]
            .iter()
            .map(|(a, w)| (slot_of(a), *w))
            .collect();
        plan.push_seq(
            p,
            0,
            |pos| table[pos / bs] as usize * bs + pos % bs,
            &table,
            &mix,
            true,
        );
    }
    Ok(ex.step(&plan)?)
}

fn logit_errors(reference: &[f32], test: &[f32], vocab: usize) -> Value {
    let (mut max, mut d2, mut r2) = (0f64, 0f64, 0f64);
    for (r, t) in reference.iter().zip(test) {
        let d = (*t as f64 - *r as f64).abs();
        max = max.max(if d.is_nan() { f64::INFINITY } else { d });
        d2 += d * d;
        r2 += (*r as f64) * (*r as f64);
    }
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
    };
    let differ = reference
        .chunks(vocab)
        .zip(test.chunks(vocab))
        .filter(|(r, t)| argmax(r) != argmax(t))
        .count();
    json!({"max_abs": max, "rel_l2": (d2 / r2.max(1e-30)).sqrt(), "argmax_rows_differ": differ,
        "rows": reference.len() / vocab.max(1), "same_len": reference.len() == test.len()})
}

/// The first (request, token index) where `test` leaves `reference`, if any.
fn first_divergence(reference: &[Vec<u32>], test: &[Vec<u32>]) -> Value {
    for (i, (r, t)) in reference.iter().zip(test).enumerate() {
        if let Some(k) = (0..r.len().max(t.len())).find(|&k| r.get(k) != t.get(k)) {
            return json!({"request": i, "token": k});
        }
    }
    Value::Null
}

pub fn run(a: CompareArgs) -> anyhow::Result<()> {
    let device = DeviceKind::parse(&a.device)?;
    anyhow::ensure!(
        matches!(device, DeviceKind::Cuda(_) | DeviceKind::CandleCpu),
        "--device: cuda, cuda:N or candle-cpu"
    );
    let f32_opts = LoadOptions {
        dtype: WeightDtype::F32,
        ..Default::default()
    };
    let test_opts = match a.dtype.as_str() {
        "f32" => f32_opts,
        "bf16" => LoadOptions::default(),
        other => anyhow::bail!("--dtype {other}: expected f32 or bf16"),
    };
    let reference = Arc::new(Model::load_with(&a.model, &f32_opts)?);
    let test = Arc::new(Model::load_with(&a.model, &test_opts)?);
    let registry = AdapterRegistry::new(reference.config().clone());
    let mut adapters = Vec::new();
    for spec in &a.adapters {
        let (name, dir) = spec
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--adapter expects name=dir, got `{spec}`"))?;
        registry.register(name, std::path::Path::new(dir))?;
        adapters.push(registry.load(name)?);
    }
    let mixes = mixes(&adapters);
    let vocab = reference.config().vocab_size;
    let params = SamplingParams {
        max_tokens: a.tokens,
        ignore_eos: true,
        ..Default::default()
    };
    let reqs: Vec<GenerateRequest> = (0..REQUESTS)
        .map(|i| GenerateRequest {
            prompt_ids: prompt(i, vocab),
            adapters: mixes[i % mixes.len()]
                .iter()
                .map(|(ad, w)| (ad.clone().into(), *w))
                .collect(),
            params: params.clone(),
        })
        .collect();
    let logits = logit_errors(
        &prefill_logits(&reference, DeviceKind::Cpu, &mixes)?,
        &prefill_logits(&test, device, &mixes)?,
        vocab,
    );
    let base = (
        generate(&reference, DeviceKind::Cpu, &reqs[..1])?,
        generate(&test, device, &reqs[..1])?,
    );
    let batch = (
        generate(&reference, DeviceKind::Cpu, &reqs)?,
        generate(&test, device, &reqs)?,
    );
    let short = batch.0.iter().chain(&base.0).any(|t| t.len() != a.tokens);
    anyhow::ensure!(
        !short,
        "the CPU f32 reference did not generate {} tokens for every request",
        a.tokens
    );
    let (base_div, batch_div) = (
        first_divergence(&base.0, &base.1),
        first_divergence(&batch.0, &batch.1),
    );
    let equal = base_div.is_null() && batch_div.is_null();
    let must_equal = a.dtype == "f32";
    let report = json!({
        "model": a.model, "device": a.device, "dtype": a.dtype, "adapters": adapters.len(),
        "mixes": mixes.len(), "requests": REQUESTS, "tokens": a.tokens,
        "prefill_logits": logits,
        "base_tokens_equal": base_div.is_null(), "base_first_divergence": base_div,
        "batch_tokens_equal": batch_div.is_null(), "batch_first_divergence": batch_div,
        "pass": equal || !must_equal,
    });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(p) = &a.out {
        std::fs::write(p, text.clone() + "\n")?;
    }
    anyhow::ensure!(
        equal || !must_equal,
        "{} in f32: greedy tokens differ from the CPU f32 executor's",
        a.device
    );
    Ok(())
}
