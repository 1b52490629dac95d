//! Op-level GPU benchmark of a Llama-3-8B-shaped decode step, run on the device machine by
//! `scripts/gpu-run.sh bench` (feature `cuda`). Weights are zero-filled bf16 buffers (timing does
//! not depend on values); it reports, as a markdown table on stdout:
//! - device-to-device copy bandwidth (the roofline's denominator);
//! - the 224 projections of one decode step (`cuda::linear`, 32 layers x 7) at batch 1, 32, 128,
//!   against weight bytes / bandwidth;
//! - the same step plus BGMV rank-16 LoRA on all seven projections with 1, 100, 1000 adapters
//!   (Zipf 1.0 over the batch's rows), as a fraction of the no-adapter step. To fit 1000 adapters
//!   in memory, each adapter's seven A/B pairs are shared by all 32 layers (2.6 GB per 1000).
//! - host -> device upload time of one adapter for all 32 layers (84 MB, pageable memory).
//!
//! Not measured here: attention, norms, sampling, the engine loop (the ops are not yet wired in).

use half::bf16;
use openlora::ops::cuda::{self, BgmvIndex, CudaDevice, CudaSlice, DeviceLora, DeviceLoraTable};
use std::time::Instant;

const LAYERS: usize = 32;
const HIDDEN: usize = 4096;
const KV: usize = 1024;
const FFN: usize = 14336;
const RANK: usize = 16;
/// (in, out) of q, k, v, o, gate, up, down.
const PROJ: [(usize, usize); 7] = [
    (HIDDEN, HIDDEN),
    (HIDDEN, KV),
    (HIDDEN, KV),
    (HIDDEN, HIDDEN),
    (HIDDEN, FFN),
    (HIDDEN, FFN),
    (FFN, HIDDEN),
];

type R<T> = openlora::Result<T>;

fn time(dev: &CudaDevice, reps: usize, mut f: impl FnMut() -> R<()>) -> R<f64> {
    f()?;
    dev.synchronize()?;
    let t = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    dev.synchronize()?;
    Ok(t.elapsed().as_secs_f64() / reps as f64)
}

fn bandwidth(dev: &CudaDevice) -> R<f64> {
    let n = 1usize << 30; // 2 GiB of bf16
    let src = dev.zeros::<bf16>(n)?;
    let mut dst = dev.zeros::<bf16>(n)?;
    let s = time(dev, 10, || {
        dev.stream().memcpy_dtod(&src, &mut dst)?;
        Ok(())
    })?;
    Ok(2.0 * (n * 2) as f64 / s)
}

/// Row i's adapter under Zipf(1.0) over `n` adapters: deterministic quantiles, no RNG needed.
fn zipf_assign(rows: usize, n: usize) -> Vec<usize> {
    let h: f64 = (1..=n).map(|k| 1.0 / k as f64).sum();
    (0..rows)
        .map(|i| {
            let mut u = (i as f64 + 0.5) / rows as f64 * h;
            (0..n)
                .find(|&k| {
                    u -= 1.0 / (k + 1) as f64;
                    u <= 0.0
                })
                .unwrap_or(n - 1)
        })
        .collect()
}

fn main() -> R<()> {
    let dev = CudaDevice::open(0)?;
    let bw = bandwidth(&dev)?;
    let weights: Vec<Vec<CudaSlice<bf16>>> = (0..LAYERS)
        .map(|_| {
            PROJ.iter()
                .map(|&(i, o)| dev.zeros::<bf16>(i * o))
                .collect()
        })
        .collect::<R<_>>()?;
    let wbytes = (LAYERS * PROJ.iter().map(|&(i, o)| i * o).sum::<usize>() * 2) as f64;
    let roof = wbytes / bw;
    println!("device: {}\n", dev.name()?);
    println!("| measurement | value |\n|---|---|");
    println!("| D2D copy bandwidth | {:.0} GB/s |", bw / 1e9);
    println!(
        "| projection weights (32 x 7, bf16) | {:.2} GiB; roofline {:.2} ms/step |",
        wbytes / 2f64.powi(30),
        roof * 1e3
    );
    let up = vec![bf16::ZERO; PROJ.iter().map(|&(i, o)| RANK * (i + o)).sum::<usize>() * LAYERS];
    let t = Instant::now();
    let _one = dev.upload(&up)?;
    dev.synchronize()?;
    println!(
        "| adapter upload, r16 x 7 proj x 32 layers ({:.0} MB) | {:.2} ms |",
        (up.len() * 2) as f64 / 1e6,
        t.elapsed().as_secs_f64() * 1e3
    );
    let adapters: Vec<Vec<DeviceLora<bf16>>> = (0..1000)
        .map(|_| {
            PROJ.iter()
                .map(|&(i, o)| {
                    let (a, b) = (vec![bf16::ZERO; RANK * i], vec![bf16::ZERO; o * RANK]);
                    DeviceLora::upload(&dev, &a, &b, RANK, i, o)
                })
                .collect()
        })
        .collect::<R<_>>()?;
    for batch in [1usize, 32, 128] {
        let x: Vec<CudaSlice<bf16>> = PROJ
            .iter()
            .map(|&(i, _)| dev.zeros(batch * i))
            .collect::<R<_>>()?;
        let mut y: Vec<CudaSlice<bf16>> = PROJ
            .iter()
            .map(|&(_, o)| dev.zeros(batch * o))
            .collect::<R<_>>()?;
        let base = time(&dev, 10, || {
            for lw in &weights {
                for (p, w) in lw.iter().enumerate() {
                    cuda::linear(&dev, &x[p], w, PROJ[p].1, PROJ[p].0, None, &mut y[p])?;
                }
            }
            Ok(())
        })?;
        println!(
            "| linear-only decode step, batch {batch} | {:.3} ms ({:.0}% of roofline) |",
            base * 1e3,
            roof / base * 100.0
        );
        for n in [1usize, 100, 1000] {
            // The step's index is built once and shared by all 224 launches; the pool's slot
            // tables (one per projection, shared by the layers here) are built once per count.
            let who = zipf_assign(batch, n);
            let entries: Vec<(usize, usize, f32)> = who
                .iter()
                .enumerate()
                .map(|(row, &a)| (row, a, 2.0))
                .collect();
            let index = BgmvIndex::new(&dev, batch, &entries)?;
            let tables: Vec<DeviceLoraTable<bf16>> = (0..PROJ.len())
                .map(|p| {
                    let slots: Vec<&DeviceLora<bf16>> =
                        adapters[..n].iter().map(|a| &a[p]).collect();
                    DeviceLoraTable::new(&dev, &slots)
                })
                .collect::<R<_>>()?;
            let s = time(&dev, 10, || {
                for lw in &weights {
                    for (p, w) in lw.iter().enumerate() {
                        let (i, o) = PROJ[p];
                        cuda::linear(&dev, &x[p], w, o, i, None, &mut y[p])?;
                        cuda::bgmv_indexed(&dev, &x[p], &index, &tables[p], &mut y[p])?;
                    }
                }
                Ok(())
            })?;
            println!("| + BGMV r16, {n} adapters (Zipf 1.0), batch {batch} | {:.3} ms ({:.0}% of no-adapter throughput) |", s * 1e3, base / s * 100.0);
        }
    }
    Ok(())
}
