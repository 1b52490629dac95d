//! CPU micro-benchmark of decode's LoRA cost at batch 1: SmolLM2-135M's projections (30 layers
//! of q/k/v 576→576/192/192, o 576→576, gate/up 576→1536, down 1536→576, Q4_1 packed) run group
//! after group as a decode step does, reading every layer's weights from memory, with no adapter
//! and with one rank-`OPENLORA_RANK` (16) bf16 adapter (`OPENLORA_LORA=int8`: int8) on all seven
//! projections; the two are
//! stepped in turn, so the machine's swings hit both alike. Prints µs per step per group and the
//! adapter's ratio. Activations default to int16 (`OPENLORA_ACTS=int8` to change).
//!
//! `cargo run --release --example lora_bench`; `OPENLORA_STEPS=400` steps per side;
//! `OPENLORA_HOT=1`: every layer uses layer 0's adapter (cache-resident: what is left is the
//! cost of the work and its structure, not of the adapter's bytes); `OPENLORA_ONLY=base|lora`
//! runs one side (to profile it); `OPENLORA_NOOP=1`: the adapter side runs the fused path with
//! hooks that do nothing (the cost of the path itself); `OPENLORA_RAW=1`: the shrinks and
//! expands alone on the calling thread, from memory, in stretches of `OPENLORA_STRETCH` (56)
//! columns, with their GB/s.

use openlora::ops::cpu::quant::{qlinear_lora, qlinear_many, ActPrecision, QMatrix, QProj};
use openlora::ops::cpu::quant::{LoraSegs, WeightFormat};
use openlora::ops::cpu::{HalfLora, HalfTerm, Int8Lora, Int8Term};
use std::time::Instant;

const LAYERS: usize = 30;
/// (input width, outputs of each projection) of the four groups.
const GROUPS: [(usize, &[usize]); 4] = [
    (576, &[576, 192, 192]),
    (576, &[576]),
    (576, &[1536, 1536]),
    (1536, &[576]),
];

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn data(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i + seed) * 7919 % 1000) as f32 - 500.0) / 700.0)
        .collect()
}

fn main() {
    let rank = env("OPENLORA_RANK", 16);
    let steps = env("OPENLORA_STEPS", 400);
    let act = match std::env::var("OPENLORA_ACTS").as_deref() {
        Ok("int8") => ActPrecision::Int8,
        _ => ActPrecision::Int16,
    };
    // weights[layer][group][proj], loras likewise.
    let mut weights: Vec<Vec<Vec<QMatrix>>> = Vec::new();
    let mut loras: Vec<Vec<Vec<HalfLora>>> = Vec::new();
    for l in 0..LAYERS {
        let (mut ws, mut ls) = (Vec::new(), Vec::new());
        for (g, (k, outs)) in GROUPS.iter().enumerate() {
            let seed = l * 100 + g * 10;
            ws.push(
                outs.iter()
                    .map(|&n| {
                        QMatrix::quantize(&data(n * k, seed), n, *k, WeightFormat::Q4_1)
                            .unwrap()
                            .packed()
                            .with_act_precision(act)
                    })
                    .collect(),
            );
            ls.push(
                outs.iter()
                    .map(|&n| {
                        let a: Vec<f32> =
                            data(rank * k, seed + 1).iter().map(|v| v / 30.0).collect();
                        let b: Vec<f32> =
                            data(n * rank, seed + 2).iter().map(|v| v / 30.0).collect();
                        HalfLora::from_f32(&a, &b, rank)
                    })
                    .collect(),
            );
        }
        weights.push(ws);
        loras.push(ls);
    }
    let int8 = std::env::var("OPENLORA_LORA").as_deref() == Ok("int8");
    let hot = std::env::var("OPENLORA_HOT").is_ok();
    let noop = std::env::var("OPENLORA_NOOP").is_ok();
    let loras8: Vec<Vec<Vec<Int8Lora>>> = loras
        .iter()
        .map(|l| {
            l.iter()
                .map(|g| {
                    g.iter()
                        .map(|h| {
                            let w = |v: &u16| f32::from_bits((*v as u32) << 16);
                            let a: Vec<f32> = h.a.iter().map(w).collect();
                            let mut b = vec![0f32; h.out_dim * h.rank];
                            for j in 0..h.out_dim {
                                for r in 0..h.rank {
                                    b[j * h.rank + r] = w(&h.b_at(j, r));
                                }
                            }
                            Int8Lora::from_f32(&a, &b, h.rank)
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    let xs: Vec<Vec<f32>> = GROUPS.iter().map(|(k, _)| data(*k, 7)).collect();
    if std::env::var("OPENLORA_RAW").is_ok() {
        let stretch: usize = env("OPENLORA_STRETCH", 56);
        let (mut ts, mut te) = (0f64, 0f64);
        let mut sh = vec![0f32; rank];
        for _ in 0..steps {
            for l in 0..LAYERS {
                for (g, x) in xs.iter().enumerate() {
                    let n = loras[l][g].len();
                    for h in 0..n {
                        let (half, q8) = (&loras[l][g][h], &loras8[l][g][h]);
                        let out_dim = half.out_dim;
                        let (ht, qt) = (
                            HalfTerm {
                                lora: half,
                                coeff: 2.0,
                            },
                            Int8Term {
                                lora: q8,
                                coeff: 2.0,
                            },
                        );
                        let mut y = vec![0f32; out_dim];
                        let (a, b) = match int8 {
                            true => raw(&qt, x, &mut sh, &mut y, stretch),
                            false => raw(&ht, x, &mut sh, &mut y, stretch),
                        };
                        (ts, te) = (ts + a, te + b);
                        std::hint::black_box(&y);
                    }
                }
            }
        }
        let (ab, bb): (usize, usize) = loras
            .iter()
            .flatten()
            .flatten()
            .map(|h| (h.a.len() * 2, h.bp.len() * 2))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        println!(
            "shrink {:.0} µs/step {:.1} GB/s; expand {:.0} µs/step {:.1} GB/s",
            ts / steps as f64 * 1e6,
            ab as f64 * steps as f64 / ts / 1e9,
            te / steps as f64 * 1e6,
            bb as f64 * steps as f64 / te / 1e9
        );
        return;
    }
    // One decode step's projections; `t[g]` gets each group's time. Run on a pool worker (as
    // the CPU executor runs its forward pass), so the regions fork from inside the pool.
    let step = |with: bool, t: &mut [f64; 4]| {
        for l in 0..LAYERS {
            for (g, x) in xs.iter().enumerate() {
                let projs: Vec<QProj> = weights[l][g].iter().map(|w| (w, None)).collect();
                let start = Instant::now();
                let ys = if with && noop {
                    openlora::ops::cpu::quant::qlinear_many_with(
                        x,
                        1,
                        &projs,
                        Some(&openlora::ops::cpu::quant::NoHooks),
                    )
                } else if with && int8 {
                    let ll = if hot { 0 } else { l };
                    let terms: Vec<[Int8Term; 1]> = loras8[ll][g]
                        .iter()
                        .map(|h| {
                            [Int8Term {
                                lora: h,
                                coeff: 2.0,
                            }]
                        })
                        .collect();
                    let segs: Vec<[(std::ops::Range<usize>, &[Int8Term]); 1]> =
                        terms.iter().map(|t| [(0..1, &t[..])]).collect();
                    let refs: Vec<&LoraSegs<Int8Term>> = segs.iter().map(|s| &s[..]).collect();
                    qlinear_lora(x, 1, &projs, &refs)
                } else if with {
                    let ll = if hot { 0 } else { l };
                    let terms: Vec<[HalfTerm; 1]> = loras[ll][g]
                        .iter()
                        .map(|h| {
                            [HalfTerm {
                                lora: h,
                                coeff: 2.0,
                            }]
                        })
                        .collect();
                    let segs: Vec<[(std::ops::Range<usize>, &[HalfTerm]); 1]> =
                        terms.iter().map(|t| [(0..1, &t[..])]).collect();
                    let refs: Vec<&LoraSegs<HalfTerm>> = segs.iter().map(|s| &s[..]).collect();
                    qlinear_lora(x, 1, &projs, &refs)
                } else {
                    qlinear_many(x, 1, &projs)
                };
                t[g] += start.elapsed().as_secs_f64();
                std::hint::black_box(ys);
            }
        }
    };
    let (mut base, mut with) = ([0f64; 4], [0f64; 4]);
    step(false, &mut [0.0; 4]);
    step(true, &mut [0.0; 4]);
    let only = std::env::var("OPENLORA_ONLY").unwrap_or_default();
    for _ in 0..steps {
        if only != "lora" {
            rayon::scope(|_| step(false, &mut base));
        }
        if only != "base" {
            rayon::scope(|_| step(true, &mut with));
        }
    }
    let bytes: usize = loras.iter().flatten().flatten().map(HalfLora::bytes).sum();
    println!(
        "{} threads, {} activations, rank {rank}: adapter {:.1} MiB bf16, {steps} steps each",
        rayon::current_num_threads(),
        act.name(),
        bytes as f64 / 1048576.0
    );
    println!("| group | base µs/step | with adapter µs/step | extra µs |");
    println!("|---|---|---|---|");
    let names = ["q/k/v", "o", "gate/up", "down"];
    for g in 0..4 {
        let (b, w) = (base[g] / steps as f64 * 1e6, with[g] / steps as f64 * 1e6);
        println!("| {} | {b:.0} | {w:.0} | {:.0} |", names[g], w - b);
    }
    let (b, w): (f64, f64) = (base.iter().sum(), with.iter().sum());
    println!(
        "| all | {:.0} | {:.0} | {:.0} ({:.1}%) |",
        b / steps as f64 * 1e6,
        w / steps as f64 * 1e6,
        (w - b) / steps as f64 * 1e6,
        (w / b - 1.0) * 100.0
    );
}

/// One term's shrink, then its expand in stretches of `stretch` columns: the seconds each took.
fn raw<T: openlora::ops::cpu::LoraPair>(
    t: &T,
    x: &[f32],
    sh: &mut [f32],
    y: &mut [f32],
    stretch: usize,
) -> (f64, f64) {
    let s0 = Instant::now();
    t.shrink(x, sh);
    let ts = s0.elapsed().as_secs_f64();
    let s0 = Instant::now();
    for (c, ys) in y.chunks_mut(stretch).enumerate() {
        t.expand(sh, c * stretch, ys);
    }
    (ts, s0.elapsed().as_secs_f64())
}
