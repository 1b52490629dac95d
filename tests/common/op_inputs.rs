//! Random inputs for the custom-op tests (tests/device_ops.rs on the CPU twin, tests/cuda_ops.rs on
//! a GPU): values in [-1, 1), adapter mixes spread over slots, and attention batches mixing decode
//! rows, whole prefills and prefill chunks on scattered block tables.

use rand::rngs::StdRng;
use rand::Rng;
use std::ops::Range;

pub const BATCHES: [usize; 4] = [1, 3, 7, 133];

pub fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

#[derive(Clone, Copy, Debug)]
pub enum Spread {
    Distinct,
    Uniform,
    Zipf,
    Identical,
}

pub const SPREADS: [Spread; 4] = [
    Spread::Distinct,
    Spread::Uniform,
    Spread::Zipf,
    Spread::Identical,
];

/// A slot drawn for row `i` under `spread` over `n` slots.
pub fn draw(spread: Spread, i: usize, n: usize, rng: &mut StdRng) -> usize {
    match spread {
        Spread::Distinct => i % n,
        Spread::Uniform => rng.random_range(0..n),
        Spread::Identical => 0,
        Spread::Zipf => {
            // P(k) ∝ 1 / (k + 1).
            let h: f64 = (1..=n).map(|k| 1.0 / k as f64).sum();
            let mut u = rng.random_range(0.0..h);
            (0..n)
                .find(|&k| {
                    u -= 1.0 / (k + 1) as f64;
                    u < 0.0
                })
                .unwrap_or(n - 1)
        }
    }
}

/// Each row's mix over `n` slots: none every 5th row, a weighted pair every 7th, else one adapter.
pub fn mixes(spread: Spread, rows: usize, n: usize, rng: &mut StdRng) -> Vec<Vec<(u32, f32)>> {
    (0..rows)
        .map(|i| match (i % 5, i % 7) {
            (4, _) => vec![],
            (_, 6) => vec![
                (draw(spread, i, n, rng) as u32, 0.5),
                (draw(spread, i + 1, n, rng) as u32, -0.7),
            ],
            _ => vec![(draw(spread, i, n, rng) as u32, 1.0)],
        })
        .collect()
}

/// Runs of rows with the same mix (as `StepPlan::push_seq` merges them).
pub fn segments(mixes: &[Vec<(u32, f32)>]) -> Vec<(Range<usize>, Vec<(u32, f32)>)> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=mixes.len() {
        if i == mixes.len() || mixes[i] != mixes[start] {
            out.push((start..i, mixes[start].clone()));
            start = i;
        }
    }
    out
}

/// One sequence of an attention batch: context `ctx`, of which the last `rows` are this step's.
pub struct Seq {
    pub ctx: usize,
    pub rows: usize,
    pub table: Vec<u32>,
}

/// `n` sequences of context < `max_ctx`: decode rows, whole prefills and prefill chunks, each on
/// its own blocks, reversed and interleaved with the others' by a stride of 2.
pub fn scattered_seqs(rng: &mut StdRng, n: usize, bs: usize, max_ctx: usize) -> Vec<Seq> {
    (0..n)
        .map(|i| {
            let ctx = rng.random_range(1..max_ctx);
            let rows = match i % 3 {
                0 => 1,
                1 => ctx,
                _ => rng.random_range(1..=ctx),
            };
            (ctx, rows)
        })
        .scan(0u32, |next, (ctx, rows)| {
            let n = ctx.div_ceil(bs) as u32;
            let table = (0..n).rev().map(|b| *next + 2 * b).collect();
            *next += 2 * n;
            Some(Seq { ctx, rows, table })
        })
        .collect()
}

/// Blocks the sequences span, and every context position's cache slot in sequence order.
pub fn blocks_and_slots(seqs: &[Seq], bs: usize) -> (usize, Vec<u32>) {
    let blocks = seqs
        .iter()
        .map(|s| s.table.iter().max().unwrap() + 1)
        .max()
        .unwrap() as usize;
    let slots = seqs
        .iter()
        .flat_map(|s| (0..s.ctx).map(move |p| s.table[p / bs] * bs as u32 + (p % bs) as u32))
        .collect();
    (blocks, slots)
}
