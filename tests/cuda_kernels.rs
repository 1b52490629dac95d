#![cfg(feature = "cuda")]
//! Every CUDA kernel against its CPU twin (`openlora::ops::cpu`), on fresh random inputs each run
//! (the seed is printed; set OPENLORA_TEST_SEED to replay), in f32, f16 and bf16. Inputs are
//! rounded to the element type first and the CPU twin gets the rounded values, so the only
//! differences left are f32 summation order and the final rounding: tolerances are per dtype.
//! Write-only outputs are poisoned with NaN before each launch; LoRA batches cover the adapter
//! spreads distinct / uniform / zipf / identical, 1, 3, 7 and 133 sequences, ranks 8/16/64 mixed
//! in one launch, rows without adapters and a two-adapter mix. Needs an NVIDIA GPU (sm_90+): run
//! through `scripts/gpu-run.sh` on the device machine.

use half::{bf16, f16};
use openlora::ops::cpu;
use openlora::ops::cuda::{
    self, CudaDevice, CudaSlice, DecodeRow, DeviceAttnBatch, DeviceKvLayer, DeviceLora,
    DeviceLoraTerm, DeviceRopeTable, DeviceSegment, GpuFloat,
};
use rand::{rngs::StdRng, Rng, SeedableRng};

const BATCHES: [usize; 4] = [1, 3, 7, 133];
const RANKS: [usize; 3] = [8, 16, 64];
/// Uniform/zipf spreads draw from this many adapters.
const POOL: usize = 12;

fn device() -> CudaDevice {
    CudaDevice::open(0).unwrap_or_else(|e| {
        panic!(
            "these tests need an NVIDIA GPU (sm_90+); run scripts/gpu-run.sh on a GPU machine: {e}"
        )
    })
}

fn rng(test: &str) -> StdRng {
    let seed = std::env::var("OPENLORA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            t.map(|d| d.as_nanos() as u64).unwrap_or(1)
        });
    eprintln!("{test}: OPENLORA_TEST_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// |got - want| <= tol · (1 + |want|): about four units of the type's last place.
fn tol<T: GpuFloat>() -> f32 {
    match T::SUFFIX {
        "f32" => 1e-4,
        "f16" => 4e-3,
        _ => 3e-2,
    }
}

fn random(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| rng.random_range(-1.0f32..1.0) * scale)
        .collect()
}

/// `v` in T, and the same values back in f32 (what the CPU twin sees).
fn round<T: GpuFloat>(v: &[f32]) -> (Vec<T>, Vec<f32>) {
    let t: Vec<T> = v.iter().map(|&x| T::from_f32(x)).collect();
    let back = t.iter().map(|&x| x.to_f32()).collect();
    (t, back)
}

fn poisoned<T: GpuFloat + Default>(dev: &CudaDevice, n: usize) -> CudaSlice<T> {
    dev.upload(&vec![T::from_f32(f32::NAN); n]).unwrap()
}

fn assert_close<T: GpuFloat>(what: &str, dev: &CudaDevice, got: &CudaSlice<T>, want: &[f32]) {
    dev.synchronize().unwrap();
    let got: Vec<f32> = dev
        .download(got)
        .unwrap()
        .iter()
        .map(|v| v.to_f32())
        .collect();
    assert_eq!(got.len(), want.len(), "{what}: length");
    let tol = tol::<T>();
    let bad: Vec<usize> = (0..got.len())
        .filter(|&i| {
            let d = (got[i] - want[i]).abs();
            d.is_nan() || d > tol * (1.0 + want[i].abs())
        })
        .collect();
    if let Some(&i) = bad.first() {
        panic!(
            "{what} ({}): {} of {} elements differ; first at {i}: gpu {} vs cpu {}",
            T::SUFFIX,
            bad.len(),
            got.len(),
            got[i],
            want[i]
        );
    }
}

// ---------------------------------------------------------------- LoRA (SGMV / BGMV)

#[derive(Clone, Copy, Debug)]
enum Spread {
    Distinct,
    Uniform,
    Zipf,
    Identical,
}
const SPREADS: [Spread; 4] = [
    Spread::Distinct,
    Spread::Uniform,
    Spread::Zipf,
    Spread::Identical,
];

/// The adapter of each of `n` sequences; `None` (base model only) for about one in eight, except
/// under `Identical`.
fn assign(rng: &mut StdRng, spread: Spread, n: usize) -> Vec<Option<usize>> {
    let zipf_total: f64 = (1..=POOL).map(|k| 1.0 / k as f64).sum();
    (0..n)
        .map(|i| {
            let base_only = !matches!(spread, Spread::Identical) && rng.random_range(0..8) == 0;
            (!base_only).then(|| match spread {
                Spread::Distinct => i,
                Spread::Uniform => rng.random_range(0..POOL),
                Spread::Identical => 0,
                Spread::Zipf => {
                    let mut u = rng.random_range(0.0..zipf_total);
                    (0..POOL)
                        .find(|&k| {
                            u -= 1.0 / (k + 1) as f64;
                            u <= 0.0
                        })
                        .unwrap_or(POOL - 1)
                }
            })
        })
        .collect()
}

/// Host (rounded f32) and device copies of one adapter's A/B; rank cycles through 8/16/64.
struct Adapter<T> {
    a: Vec<f32>,
    b: Vec<f32>,
    rank: usize,
    dev: DeviceLora<T>,
}

fn adapters<T: GpuFloat + Default>(
    dev: &CudaDevice,
    rng: &mut StdRng,
    n: usize,
    din: usize,
    dout: usize,
) -> Vec<Adapter<T>> {
    (0..n)
        .map(|i| {
            let rank = RANKS[i % RANKS.len()];
            let (ta, a) = round::<T>(&random(rng, rank * din, 1.0 / (din as f32).sqrt()));
            let (tb, b) = round::<T>(&random(rng, dout * rank, 1.0 / (rank as f32).sqrt()));
            let d = DeviceLora::upload(dev, &ta, &tb, rank, din, dout).unwrap();
            Adapter { a, b, rank, dev: d }
        })
        .collect()
}

fn sgmv_case<T: GpuFloat + Default>(dev: &CudaDevice, rng: &mut StdRng, spread: Spread, n: usize) {
    let (din, dout) = (320, 200); // dout < one 256-column tile, din not a multiple of the warp loop
    let mut seqs = assign(rng, spread, n);
    seqs.sort_by_key(|a| a.map_or(usize::MAX, |a| a)); // the scheduler groups rows by adapter
    let ads = adapters::<T>(dev, rng, n.max(POOL), din, dout);
    let coeff: Vec<f32> = (0..ads.len()).map(|_| rng.random_range(0.5..2.0)).collect();
    // Rows: each sequence contributes a prefill chunk of 1..=6 rows; neighbours with the same
    // adapter merge into one segment (as lora::LoraBatch does).
    let mut segs: Vec<(std::ops::Range<usize>, usize)> = Vec::new();
    let mut rows = 0;
    for a in &seqs {
        let len = rng.random_range(1..=6);
        if let Some(a) = *a {
            match segs.last_mut() {
                Some((r, last)) if *last == a && r.end == rows => r.end = rows + len,
                _ => segs.push((rows..rows + len, a)),
            }
        }
        rows += len;
    }
    // The first segment mixes a second adapter (a different rank) after its own.
    let mix = |i: usize, a: usize| -> Vec<usize> {
        match i {
            0 => vec![a, (a + 1) % ads.len()],
            _ => vec![a],
        }
    };
    let (tx, x) = round::<T>(&random(rng, rows * din, 1.0));
    let (ty, mut y) = round::<T>(&random(rng, rows * dout, 1.0));
    let cpu_segs: Vec<cpu::LoraSegment> = segs
        .iter()
        .enumerate()
        .map(|(i, (r, a))| cpu::LoraSegment {
            rows: r.clone(),
            terms: mix(i, *a)
                .into_iter()
                .map(|k| cpu::LoraTerm {
                    a: &ads[k].a,
                    b: &ads[k].b,
                    rank: ads[k].rank,
                    coeff: coeff[k],
                })
                .collect(),
        })
        .collect();
    cpu::sgmv(&x, din, &cpu_segs, dout, &mut y);
    let dev_segs: Vec<DeviceSegment<T>> = segs
        .iter()
        .enumerate()
        .map(|(i, (r, a))| DeviceSegment {
            rows: r.clone(),
            terms: mix(i, *a)
                .into_iter()
                .map(|k| DeviceLoraTerm {
                    lora: &ads[k].dev,
                    coeff: coeff[k],
                })
                .collect(),
        })
        .collect();
    let xd = dev.upload(&tx).unwrap();
    let mut yd = dev.upload(&ty).unwrap();
    cuda::sgmv(dev, &xd, din, &dev_segs, dout, &mut yd).unwrap();
    assert_close(&format!("sgmv {spread:?} n={n}"), dev, &yd, &y);
}

fn bgmv_case<T: GpuFloat + Default>(dev: &CudaDevice, rng: &mut StdRng, spread: Spread, n: usize) {
    let (din, dout) = (576, 300);
    let seqs = assign(rng, spread, n); // decode: one row per sequence, in arrival order
    let ads = adapters::<T>(dev, rng, n.max(POOL), din, dout);
    let coeff: Vec<f32> = (0..n).map(|_| rng.random_range(0.5..2.0)).collect();
    let (tx, x) = round::<T>(&random(rng, n * din, 1.0));
    let (ty, mut y) = round::<T>(&random(rng, n * dout, 1.0));
    let cpu_segs: Vec<cpu::LoraSegment> = (0..n)
        .filter_map(|i| {
            seqs[i].map(|a| cpu::LoraSegment {
                rows: i..i + 1,
                terms: vec![cpu::LoraTerm {
                    a: &ads[a].a,
                    b: &ads[a].b,
                    rank: ads[a].rank,
                    coeff: coeff[i],
                }],
            })
        })
        .collect();
    cpu::sgmv(&x, din, &cpu_segs, dout, &mut y);
    let entries: Vec<DecodeRow<T>> = (0..n)
        .filter_map(|i| {
            seqs[i].map(|a| DecodeRow {
                row: i,
                lora: &ads[a].dev,
                coeff: coeff[i],
            })
        })
        .collect();
    let xd = dev.upload(&tx).unwrap();
    let mut yd = dev.upload(&ty).unwrap();
    cuda::bgmv(dev, &xd, din, &entries, dout, &mut yd).unwrap();
    assert_close(&format!("bgmv {spread:?} n={n}"), dev, &yd, &y);
}

fn lora_all<T: GpuFloat + Default>(name: &str) {
    let dev = device();
    let mut rng = rng(name);
    for spread in SPREADS {
        for n in BATCHES {
            sgmv_case::<T>(&dev, &mut rng, spread, n);
            bgmv_case::<T>(&dev, &mut rng, spread, n);
        }
    }
}

#[test]
fn sgmv_bgmv_match_cpu_twin_f32() {
    lora_all::<f32>("lora_f32");
}

#[test]
fn sgmv_bgmv_match_cpu_twin_f16() {
    lora_all::<f16>("lora_f16");
}

#[test]
fn sgmv_bgmv_match_cpu_twin_bf16() {
    lora_all::<bf16>("lora_bf16");
}

#[test]
fn sgmv_rejects_overlapping_segments_and_wrong_shapes() {
    let dev = device();
    let mut rng = rng("sgmv_rejects");
    let ads = adapters::<f32>(&dev, &mut rng, 1, 16, 8);
    let x = dev.upload(&[0f32; 4 * 16]).unwrap();
    let mut y = dev.upload(&[0f32; 4 * 8]).unwrap();
    let term = || DeviceLoraTerm {
        lora: &ads[0].dev,
        coeff: 1.0,
    };
    let overlapping = [
        DeviceSegment {
            rows: 0..3,
            terms: vec![term()],
        },
        DeviceSegment {
            rows: 2..4,
            terms: vec![term()],
        },
    ];
    assert!(cuda::sgmv(&dev, &x, 16, &overlapping, 8, &mut y).is_err());
    let beyond = [DeviceSegment {
        rows: 3..5,
        terms: vec![term()],
    }];
    assert!(cuda::sgmv(&dev, &x, 16, &beyond, 8, &mut y).is_err());
    let ok = [DeviceSegment {
        rows: 0..4,
        terms: vec![term()],
    }];
    assert!(cuda::sgmv(&dev, &x, 16, &ok, 9, &mut y).is_err());
    cuda::sgmv(&dev, &x, 16, &ok, 8, &mut y).unwrap();
    let dup = [0, 0].map(|row| DecodeRow {
        row,
        lora: &ads[0].dev,
        coeff: 1.0,
    });
    assert!(cuda::bgmv(&dev, &x, 16, &dup, 8, &mut y).is_err());
}

// ---------------------------------------------------------------- attention + KV write

fn attention_case<T: GpuFloat + Default>(
    dev: &CudaDevice,
    rng: &mut StdRng,
    n: usize,
    decode: bool,
    hd: usize,
) {
    let (heads, kvh, bs) = (8, 2, 16);
    let stride = kvh * hd;
    // Contexts of 1..=100 tokens; decode rows = 1, prefill rows = a random suffix (chunked
    // prefill after a cached prefix, or the whole prompt).
    let ctx: Vec<usize> = (0..n).map(|_| rng.random_range(1..=100)).collect();
    let rows_of: Vec<usize> = ctx
        .iter()
        .map(|&c| if decode { 1 } else { rng.random_range(1..=c) })
        .collect();
    let need: usize = ctx.iter().map(|c| c.div_ceil(bs)).sum();
    let num_blocks = need + 5;
    // Scattered block ids: a shuffled permutation, handed out in order.
    let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.random_range(0..=i));
    }
    let mut next = 0;
    let tables: Vec<Vec<u32>> = ctx
        .iter()
        .map(|c| {
            let t = ids[next..next + c.div_ceil(bs)].to_vec();
            next += t.len();
            t
        })
        .collect();
    // Every cached token's K/V, written through write_kv on both sides.
    let slots: Vec<usize> = (0..n)
        .flat_map(|s| (0..ctx[s]).map(move |p| (s, p)))
        .map(|(s, p)| tables[s][p / bs] as usize * bs + p % bs)
        .collect();
    let (tk, k) = round::<T>(&random(rng, slots.len() * stride, 1.0));
    let (tv, v) = round::<T>(&random(rng, slots.len() * stride, 1.0));
    let mut ck = vec![f32::NAN; num_blocks * bs * stride];
    let mut cv = ck.clone();
    cpu::write_kv(&k, &v, &slots, stride, &mut ck, &mut cv);
    let mut kv =
        DeviceKvLayer::filled(dev, num_blocks, bs, kvh, hd, T::from_f32(f32::NAN)).unwrap();
    let (kd, vd) = (dev.upload(&tk).unwrap(), dev.upload(&tv).unwrap());
    cuda::write_kv(dev, &kd, &vd, &slots, &mut kv).unwrap();
    dev.synchronize().unwrap();
    let same = |got: &[T], want: &[f32]| {
        got.iter()
            .zip(want)
            .all(|(g, w)| g.to_f32() == *w || (g.to_f32().is_nan() && w.is_nan()))
    };
    assert!(
        same(&dev.download(&kv.k).unwrap(), &ck),
        "write_kv K ({})",
        T::SUFFIX
    );
    assert!(
        same(&dev.download(&kv.v).unwrap(), &cv),
        "write_kv V ({})",
        T::SUFFIX
    );

    let mut seqs = Vec::new();
    let mut row = 0;
    for s in 0..n {
        seqs.push(cpu::AttnSeq {
            row_start: row,
            rows: rows_of[s],
            context_len: ctx[s],
            block_table: &tables[s],
        });
        row += rows_of[s];
    }
    let (tq, q) = round::<T>(&random(rng, row * heads * hd, 1.0));
    let view = cpu::KvLayerView {
        k: &ck,
        v: &cv,
        block_size: bs,
        kv_heads: kvh,
        head_dim: hd,
    };
    let mut want = vec![0f32; row * heads * hd];
    cpu::paged_attention(&q, &seqs, view, heads, &mut want);
    let batch = DeviceAttnBatch::upload(dev, &seqs, bs).unwrap();
    let qd = dev.upload(&tq).unwrap();
    let mut out = poisoned::<T>(dev, row * heads * hd);
    cuda::paged_attention(dev, &qd, &batch, &kv, heads, &mut out).unwrap();
    let what = format!("paged_attention n={n} decode={decode} head_dim={hd}");
    assert_close(&what, dev, &out, &want);
}

fn attention_all<T: GpuFloat + Default>(name: &str) {
    let dev = device();
    let mut rng = rng(name);
    for n in BATCHES {
        for decode in [true, false] {
            attention_case::<T>(&dev, &mut rng, n, decode, 64);
        }
    }
    attention_case::<T>(&dev, &mut rng, 7, true, 128);
    attention_case::<T>(&dev, &mut rng, 3, false, 128);
}

#[test]
fn paged_attention_and_write_kv_match_cpu_twin_f32() {
    attention_all::<f32>("attention_f32");
}

#[test]
fn paged_attention_and_write_kv_match_cpu_twin_f16() {
    attention_all::<f16>("attention_f16");
}

#[test]
fn paged_attention_and_write_kv_match_cpu_twin_bf16() {
    attention_all::<bf16>("attention_bf16");
}

// ---------------------------------------------------------------- dense projection

fn linear_all<T: GpuFloat + Default>(name: &str) {
    let dev = device();
    let mut rng = rng(name);
    // (k, n): SmolLM2's up and down projections (16-byte vector path) and an odd k (scalar path).
    for (k, n) in [(576, 1536), (1536, 576), (102, 70)] {
        let (tw, w) = round::<T>(&random(&mut rng, n * k, 1.0 / (k as f32).sqrt()));
        let (tb, bias) = round::<T>(&random(&mut rng, n, 1.0));
        let (wd, bd) = (dev.upload(&tw).unwrap(), dev.upload(&tb).unwrap());
        for m in BATCHES {
            let (tx, x) = round::<T>(&random(&mut rng, m * k, 1.0));
            let xd = dev.upload(&tx).unwrap();
            for with_bias in [false, true] {
                let mut want = vec![0f32; m * n];
                cpu::linear(&x, m, &w, n, k, with_bias.then_some(&bias[..]), &mut want);
                let mut y = poisoned::<T>(&dev, m * n);
                cuda::linear(&dev, &xd, &wd, n, k, with_bias.then_some(&bd), &mut y).unwrap();
                let what = format!("linear m={m} k={k} n={n} bias={with_bias}");
                assert_close(&what, &dev, &y, &want);
            }
        }
    }
}

#[test]
fn linear_matches_cpu_twin_f32() {
    linear_all::<f32>("linear_f32");
}

#[test]
fn linear_matches_cpu_twin_f16() {
    linear_all::<f16>("linear_f16");
}

#[test]
fn linear_matches_cpu_twin_bf16() {
    linear_all::<bf16>("linear_bf16");
}

// ---------------------------------------------------------------- norms, rope, activation

fn norm_all<T: GpuFloat + Default>(name: &str) {
    let dev = device();
    let mut rng = rng(name);
    for d in [576, 4096] {
        for rows in BATCHES {
            let (tx, x) = round::<T>(&random(&mut rng, rows * d, 2.0));
            let (tw, w) = round::<T>(&random(&mut rng, d, 1.0));
            let (tr, r) = round::<T>(&random(&mut rng, rows * d, 2.0));
            let (xd, wd) = (dev.upload(&tx).unwrap(), dev.upload(&tw).unwrap());
            let mut want = vec![0f32; rows * d];
            cpu::rms_norm(&x, &w, 1e-5, &mut want);
            let mut y = poisoned::<T>(&dev, rows * d);
            cuda::rms_norm(&dev, &xd, &wd, 1e-5, &mut y).unwrap();
            assert_close(&format!("rms_norm rows={rows} d={d}"), &dev, &y, &want);
            // Fused: the residual is stored in T, and the norm reads the stored value.
            let (_, h) = round::<T>(&r.iter().zip(&x).map(|(a, b)| a + b).collect::<Vec<_>>());
            cpu::rms_norm(&h, &w, 1e-5, &mut want);
            let mut res = dev.upload(&tr).unwrap();
            let mut y = poisoned::<T>(&dev, rows * d);
            cuda::fused_add_rms_norm(&dev, &xd, &mut res, &wd, 1e-5, &mut y).unwrap();
            assert_close(
                &format!("fused_add_rms_norm rows={rows} d={d}"),
                &dev,
                &y,
                &want,
            );
            assert_close(&format!("fused residual rows={rows} d={d}"), &dev, &res, &h);
        }
    }
}

fn rope_all<T: GpuFloat + Default>(name: &str) {
    let dev = device();
    let mut rng = rng(name);
    for (heads, hd) in [(9, 64), (8, 128)] {
        let inv_freq: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
            .collect();
        let table = cpu::RopeTable::new(&inv_freq, 2048);
        let dtable = DeviceRopeTable::upload(&dev, &table).unwrap();
        for rows in BATCHES {
            let pos: Vec<usize> = (0..rows).map(|_| rng.random_range(0..2048)).collect();
            let (tx, mut x) = round::<T>(&random(&mut rng, rows * heads * hd, 1.0));
            table.apply(&mut x, &pos, heads);
            let mut xd = dev.upload(&tx).unwrap();
            cuda::rope(&dev, &dtable, &mut xd, &pos, heads).unwrap();
            assert_close(
                &format!("rope rows={rows} heads={heads} hd={hd}"),
                &dev,
                &xd,
                &x,
            );
        }
    }
}

fn silu_all<T: GpuFloat + Default>(name: &str) {
    let dev = device();
    let mut rng = rng(name);
    for rows in BATCHES {
        let n = rows * 1536;
        let (tg, g) = round::<T>(&random(&mut rng, n, 6.0));
        let (tu, u) = round::<T>(&random(&mut rng, n, 2.0));
        let mut want = vec![0f32; n];
        cpu::silu_and_mul(&g, &u, &mut want);
        let (gd, ud) = (dev.upload(&tg).unwrap(), dev.upload(&tu).unwrap());
        let mut out = poisoned::<T>(&dev, n);
        cuda::silu_and_mul(&dev, &gd, &ud, &mut out).unwrap();
        assert_close(&format!("silu_and_mul rows={rows}"), &dev, &out, &want);
    }
}

#[test]
fn norm_rope_silu_match_cpu_twin_f32() {
    norm_all::<f32>("norm_f32");
    rope_all::<f32>("rope_f32");
    silu_all::<f32>("silu_f32");
}

#[test]
fn norm_rope_silu_match_cpu_twin_f16() {
    norm_all::<f16>("norm_f16");
    rope_all::<f16>("rope_f16");
    silu_all::<f16>("silu_f16");
}

#[test]
fn norm_rope_silu_match_cpu_twin_bf16() {
    norm_all::<bf16>("norm_bf16");
    rope_all::<bf16>("rope_bf16");
    silu_all::<bf16>("silu_bf16");
}

#[test]
fn driver_probe_agrees_with_open() {
    // The probe runs before any driver call; where it says "no driver", opening is an error (the
    // CPU fallback), never a panic inside cudarc.
    match cuda::driver_available() {
        true => assert!(CudaDevice::open_or_cpu(0).is_some()),
        false => assert!(CudaDevice::open(0).is_err()),
    }
}
