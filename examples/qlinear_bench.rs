//! CPU micro-benchmark of `ops::cpu::quant::qlinear` at SmolLM2-135M shapes (576→1536, 1536→576
//! and the 49152×576 tied lm_head; 576 is not a multiple of 256, so the k-quants are measured on
//! an 8B-shaped 4096→1024 instead) for batch sizes 1, 8 and 512, every weight format against the
//! f32 `ops::cpu::linear`, on the rayon pool (`RAYON_NUM_THREADS` to change it). Prints a markdown
//! table of GMAC/s (multiply-accumulates per second / 1e9) and weight bytes.
//!
//! `cargo run --release --example qlinear_bench [formats...]`, e.g. `... q4_1 q8_0`;
//! `OPENLORA_ISA=avx2` compares against the run-time-detected default.

use openlora::ops::cpu::linear;
use openlora::ops::cpu::quant::{qlinear_with, Isa, QMatrix, WeightFormat};
use std::time::{Duration, Instant};

/// (name, in, out)
const SHAPES: [(&str, usize, usize); 4] = [
    ("576->1536", 576, 1536),
    ("1536->576", 1536, 576),
    ("lm_head 576->49152", 576, 49152),
    ("8B k_proj 4096->1024", 4096, 1024),
];
const BATCHES: [usize; 3] = [1, 8, 512];
/// Each measurement repeats for at least this long.
const MIN_TIME: Duration = Duration::from_millis(300);

/// Seconds per call of `f`: the best of repeated timings after one warm-up call.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let (start, mut best, mut calls) = (Instant::now(), f64::MAX, 0);
    while start.elapsed() < MIN_TIME || calls < 3 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        calls += 1;
    }
    best
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let formats: Vec<WeightFormat> = if args.is_empty() {
        WeightFormat::ALL.to_vec()
    } else {
        args.iter()
            .map(|a| WeightFormat::from_name(a).expect("unknown format"))
            .collect()
    };
    let isa = match std::env::var("OPENLORA_ISA").as_deref() {
        Ok("avx2") => Isa::Avx2,
        Ok("scalar") => Isa::Scalar,
        _ => Isa::best(),
    };
    println!("isa {isa:?}, {} threads", rayon::current_num_threads());
    println!("| shape | m | format | weight MiB | GMAC/s | vs f32 linear |");
    println!("|---|---|---|---|---|---|");
    for (name, k, n) in SHAPES {
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 700.0)
            .collect();
        for m in BATCHES {
            // The lm_head is applied to the logit rows only; skip its 512-row prefill case.
            if n > 10_000 && m > 8 {
                continue;
            }
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 104729 % 997) as f32 - 498.0) / 500.0)
                .collect();
            let mut y = vec![0f32; m * n];
            let macs = (m * n * k) as f64;
            let base = time(|| linear(&x, m, &w, n, k, None, &mut y));
            println!(
                "| {name} | {m} | f32 linear | {:.1} | {:.2} | 1.00 |",
                (n * k * 4) as f64 / 1048576.0,
                macs / base / 1e9
            );
            for &f in formats.iter().filter(|f| k % f.block_len() == 0) {
                let q = QMatrix::quantize(&w, n, k, f).unwrap();
                let t = time(|| qlinear_with(isa, &x, m, &q, None, &mut y));
                let mib = q.byte_len() as f64 / 1048576.0;
                println!(
                    "| {name} | {m} | {f} | {mib:.1} | {:.2} | {:.2} |",
                    macs / t / 1e9,
                    base / t
                );
            }
        }
    }
}
