//! `openlora bench --itl`: inter-token latency of decoding streams while one long prompt prefills,
//! with the step cost bound (`max_step_cost`, the default) and without it (chunks of
//! `max_batch_tokens`, as before the bound existed), side by side in one run. The streams start
//! first and decode throughout; the long prompt arrives once all of them have their first token.

use openlora::config::EngineConfig;
use openlora::engine::{GenerateRequest, LlmEngine, SamplingParams, SeqId};
use openlora::exec::KvDtype;
use openlora::model::Model;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// What one configuration measured.
struct ItlRun {
    itl_ms: Vec<f64>,
    prefill_s: f64,
    steps: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn greedy(max_tokens: usize, prompt: Vec<u32>) -> GenerateRequest {
    GenerateRequest {
        prompt_ids: prompt,
        adapters: vec![],
        params: SamplingParams {
            max_tokens,
            ignore_eos: true,
            ..Default::default()
        },
    }
}

fn run_once(
    model: &Arc<Model>,
    kv_dtype: KvDtype,
    streams: usize,
    long: &[u32],
    max_step_cost: usize,
) -> anyhow::Result<ItlRun> {
    let cfg = EngineConfig {
        kv_dtype,
        max_step_cost,
        max_num_seqs: streams + 1,
        ..Default::default()
    };
    let mut engine = LlmEngine::new(model.clone(), cfg)?;
    let short = model
        .tokenizer()?
        .encode("Tell me a long story about the sea.", false)?;
    for i in 0..streams {
        engine.add_request(SeqId(i as u64), greedy(100_000, short.clone()))?;
    }
    let mut last: HashMap<SeqId, Instant> = HashMap::new();
    while last.len() < streams {
        for (id, _) in engine.step() {
            last.insert(id, Instant::now());
        }
    }
    let long_id = SeqId(streams as u64);
    engine.add_request(long_id, greedy(1, long.to_vec()))?;
    let start = Instant::now();
    let (mut itl_ms, mut steps) = (Vec::new(), 0);
    loop {
        let events = engine.step();
        steps += 1;
        let now = Instant::now();
        let mut done = false;
        for (id, ev) in events {
            if id == long_id {
                done = ev.finish.is_some();
            } else if let Some(t) = last.insert(id, now) {
                itl_ms.push((now - t).as_secs_f64() * 1e3);
            }
        }
        if done {
            break;
        }
    }
    itl_ms.sort_by(f64::total_cmp);
    Ok(ItlRun {
        itl_ms,
        prefill_s: start.elapsed().as_secs_f64(),
        steps,
    })
}

/// Runs the measurement with the bound and without it; prints a Markdown table.
pub fn run(
    model: &Arc<Model>,
    kv_dtype: KvDtype,
    streams: usize,
    prompt_tokens: usize,
) -> anyhow::Result<()> {
    let text = "The quick brown fox jumps over the lazy dog while the river runs to the sea. ";
    let unit = model.tokenizer()?.encode(text, false)?;
    let long: Vec<u32> = unit.iter().cycle().take(prompt_tokens).copied().collect();
    let defaults = EngineConfig::default();
    println!(
        "{streams} decoding streams while a {prompt_tokens}-token prompt prefills (max_batch_tokens {})",
        defaults.max_batch_tokens
    );
    println!("| scheduler | ITL p50 ms | ITL p99 ms | ITL max ms | prompt prefill s | steps |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, bound) in [
        ("no cost bound (chunks of max_batch_tokens)", usize::MAX / 4),
        ("max_step_cost 128 (default)", defaults.max_step_cost),
    ] {
        let r = run_once(model, kv_dtype, streams, &long, bound)?;
        println!(
            "| {label} | {:.0} | {:.0} | {:.0} | {:.1} | {} |",
            percentile(&r.itl_ms, 0.5),
            percentile(&r.itl_ms, 0.99),
            r.itl_ms.last().copied().unwrap_or(f64::NAN),
            r.prefill_s,
            r.steps
        );
    }
    Ok(())
}
