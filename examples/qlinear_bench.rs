//! CPU micro-benchmark of `ops::cpu::quant::qlinear` at SmolLM2-135M shapes (576→1536, 1536→576
//! and the 49152×576 tied lm_head; 576 is not a multiple of 256, so the k-quants are measured on
//! 8B shapes instead: k_proj 4096→1024, cache-resident, and up_proj 4096→14336, 33 MB in Q4_K, read
//! from memory) for batch sizes 1, 8 and 512, every weight format in the layout that serves it (packed
//! where the format has a packed layout, `QMatrix::packed`) with int8 and int16 activations, against
//! the f32 `ops::cpu::linear`, on the rayon pool (`RAYON_NUM_THREADS` to change it). Prints a markdown
//! table of GMAC/s (multiply-accumulates per second / 1e9) and the weight bytes read per second.
//!
//! `cargo run --release --example qlinear_bench [formats...]`, e.g. `... q4_1 q8_0`;
//! `OPENLORA_ISA=avx2` compares against the run-time-detected default; `OPENLORA_ROWS=ggml` measures
//! ggml's row layout instead of the packed one; `OPENLORA_BATCHES=1,2` picks the batch sizes;
//! `OPENLORA_COPIES=16` cycles through 16 copies of each matrix, so that every call reads its
//! weights from memory rather than from the cache (as a decode step of a large model does).

use openlora::ops::cpu::linear;
use openlora::ops::cpu::quant::{qlinear_with, ActPrecision, Isa, QMatrix, WeightFormat};
use std::time::{Duration, Instant};

/// (name, in, out)
const SHAPES: [(&str, usize, usize); 5] = [
    ("576->1536", 576, 1536),
    ("1536->576", 1536, 576),
    ("lm_head 576->49152", 576, 49152),
    ("8B k_proj 4096->1024", 4096, 1024),
    ("8B up_proj 4096->14336", 4096, 14336),
];
const BATCHES: [usize; 3] = [1, 8, 512];
/// Each measurement repeats for at least this long.
const MIN_TIME: Duration = Duration::from_millis(300);

/// Seconds per call of `f`: the median of repeated timings after one warm-up call (the best one
/// with `OPENLORA_BEST=1`).
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let (start, mut times) = (Instant::now(), Vec::new());
    while start.elapsed() < MIN_TIME || times.len() < 3 {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    match std::env::var("OPENLORA_BEST").as_deref() {
        Ok("1") => times[0],
        _ => times[times.len() / 2],
    }
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
    let packed = std::env::var("OPENLORA_ROWS").as_deref() != Ok("ggml");
    let copies: usize = std::env::var("OPENLORA_COPIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let batches: Vec<usize> = match std::env::var("OPENLORA_BATCHES") {
        Ok(s) => s
            .split(',')
            .map(|b| b.parse().expect("a batch size"))
            .collect(),
        Err(_) => BATCHES.to_vec(),
    };
    println!(
        "isa {isa:?}, {} threads, {} layout",
        rayon::current_num_threads(),
        if packed { "packed" } else { "ggml row" }
    );
    println!("| shape | m | format | acts | weight MiB | GMAC/s | weight GB/s | vs f32 linear |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, k, n) in SHAPES {
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 700.0)
            .collect();
        let quantized: Vec<QMatrix> = formats
            .iter()
            .filter(|f| k % f.block_len() == 0)
            .map(|&f| QMatrix::quantize(&w, n, k, f).unwrap())
            .collect();
        // Each `packed()` of a matrix in ggml's layout is a fresh copy.
        let layout = |q: &QMatrix| {
            if packed {
                q.clone().packed()
            } else {
                q.clone()
            }
        };
        for &m in &batches {
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
                "| {name} | {m} | f32 linear | f32 | {:.1} | {:.2} | {:.1} | 1.00 |",
                (n * k * 4) as f64 / 1048576.0,
                macs / base / 1e9,
                (n * k * 4) as f64 / base / 1e9
            );
            for q in &quantized {
                for act in [ActPrecision::Int8, ActPrecision::Int16] {
                    let qs: Vec<QMatrix> = (0..copies)
                        .map(|_| layout(q).with_act_precision(act))
                        .collect();
                    let q = &qs[0];
                    let mut next = 0;
                    let t = time(|| {
                        qlinear_with(isa, &x, m, &qs[next % copies], None, &mut y);
                        next += 1;
                    });
                    let bytes = q.byte_len() as f64;
                    println!(
                        "| {name} | {m} | {} | {} | {:.1} | {:.2} | {:.1} | {:.2} |",
                        q.format(),
                        act.name(),
                        bytes / 1048576.0,
                        macs / t / 1e9,
                        bytes / t / 1e9,
                        base / t
                    );
                }
            }
        }
    }
}
