//! `openlora bench-attribution`: index build time and per-call attribution latency of Proof of
//! Attribution on a synthetic datanet of `--tokens` tokens (Zipf-distributed ids over `--vocab`,
//! like natural text, in records of ~`--record-len` tokens from 100 contributors). Half of the
//! completions reproduce a 32-token span of some record inside noise, half are pure noise.

use super::attribution::Datanet;
use alloy::primitives::Address;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct AttributionBenchArgs {
    #[arg(long, default_value_t = 1_000_000)]
    pub tokens: usize,
    #[arg(long, default_value_t = 49_152)]
    pub vocab: u32,
    #[arg(long, default_value_t = 200)]
    pub record_len: usize,
    /// Completions attributed.
    #[arg(long, default_value_t = 200)]
    pub calls: usize,
    /// Tokens per completion.
    #[arg(long, default_value_t = 128)]
    pub output_len: usize,
    #[arg(long, default_value_t = 8)]
    pub min_span: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: u32) -> Self {
        let mut acc = 0.0;
        let cdf = (1..=n)
            .map(|r| {
                acc += 1.0 / r as f64;
                acc
            })
            .collect::<Vec<_>>();
        let total = acc;
        Zipf {
            cdf: cdf.into_iter().map(|c| c / total).collect(),
        }
    }

    fn sample(&self, rng: &mut StdRng) -> u32 {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1) as u32
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn run(a: AttributionBenchArgs) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(a.seed);
    let zipf = Zipf::new(a.vocab.max(2));
    let mut records = vec![];
    let mut total = 0;
    while total < a.tokens {
        let len =
            (a.record_len / 2 + rng.random_range(0..a.record_len.max(1))).min(a.tokens - total);
        let toks: Vec<u32> = (0..len).map(|_| zipf.sample(&mut rng)).collect();
        total += toks.len();
        records.push((Address::with_last_byte(rng.random_range(1..=100u8)), toks));
    }
    let started = Instant::now();
    let d = Datanet::from_records("bench", records.clone());
    let build = started.elapsed().as_secs_f64();
    let mut lat = vec![];
    let mut hits = 0;
    for i in 0..a.calls {
        let mut out: Vec<u32> = (0..a.output_len).map(|_| zipf.sample(&mut rng)).collect();
        if i % 2 == 0 {
            let (_, rec) = &records[rng.random_range(0..records.len())];
            let n = 32.min(rec.len()).min(out.len());
            let from = rng.random_range(0..=rec.len() - n);
            let at = rng.random_range(0..=out.len() - n);
            out[at..at + n].copy_from_slice(&rec[from..from + n]);
        }
        let t = Instant::now();
        let found = d.attribute(&out, a.min_span);
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        hits += found.is_some() as usize;
    }
    lat.sort_by(f64::total_cmp);
    let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    println!(
        "corpus: {} tokens in {} records, vocab {} (Zipf), 100 contributors",
        d.corpus_tokens() - records.len(),
        records.len(),
        a.vocab
    );
    println!("index build (suffix array): {build:.2} s");
    println!(
        "attribution of {} completions x {} tokens (min span {}): mean {mean:.3} ms, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; {hits} with spans (expected >= {})",
        a.calls,
        a.output_len,
        a.min_span,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0),
        a.calls.div_ceil(2)
    );
    Ok(())
}
