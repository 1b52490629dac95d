//! Every custom op's `cuda_fwd` against its `cpu_fwd` (feature `cuda`), in f32, bf16 and f16:
//! the same random inputs through the op on candle's CPU device (the CPU twin, f32 rows) and on
//! CUDA device 0 (rows, cache and pool in the dtype under test). SGMV/BGMV over a pool of mixed
//! ranks with rows spread over adapters (distinct, uniform, zipf, identical), weighted mixes and
//! rows without an adapter; the KV write (bit-exact: both sides round f32 to the cache dtype the
//! same way) and paged attention over scattered block tables with decode rows, whole prefills and
//! prefill chunks in one launch. Batch sizes 1, 3, 7, 133. Without a GPU each test prints why and
//! returns (scripts/gpu-run.sh stage a runs them on one).
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Tensor};
use common::op_inputs::{
    blocks_and_slots, mixes, rand_vec, scattered_seqs, segments, BATCHES, SPREADS,
};
use openlora::ops::cpu::AttnSeq;
use openlora::ops::device::{
    encode_attn_index, encode_lora_index, KvWrite, LoraPool, PagedAttention, Sgmv,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: no GPU answers ({e})");
            None
        }
    }
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Largest |a - b| / (1 + |b|).
fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f32::max)
}

fn tolerance(dt: DType) -> f32 {
    match dt {
        DType::F32 => 1e-4,
        DType::F16 => 1e-2,
        _ => 5e-2,
    }
}

#[test]
fn sgmv_cuda_matches_cpu_in_every_dtype() {
    let Some(gpu) = gpu() else { return };
    let (din, dout, max_rank) = (96, 80, 16);
    let ranks = [4, 8, 16, 4, 12, 8];
    let mut rng = StdRng::seed_from_u64(3);
    let pairs: Vec<(Vec<f32>, Vec<f32>, usize, f32)> = ranks
        .iter()
        .enumerate()
        .map(|(i, &r)| {
            (
                rand_vec(&mut rng, r * din),
                rand_vec(&mut rng, dout * r),
                r,
                0.5 + i as f32 / 4.0,
            )
        })
        .collect();
    let pool_on = |dev: &Device, dt: DType| {
        let mut p = LoraPool::new(1, [(din, dout); 7], ranks.len(), max_rank, dt, dev).unwrap();
        for (slot, (a, b, r, s)) in pairs.iter().enumerate() {
            p.set_pair(slot, 0, 3, Some((a, b, *r, *s))).unwrap();
        }
        p.upload_meta().unwrap();
        p
    };
    let cpu_pool = pool_on(&Device::Cpu, DType::F32);
    for dt in DTYPES {
        let gpu_pool = pool_on(&gpu, dt);
        for spread in SPREADS {
            for rows in BATCHES {
                let mixes = mixes(spread, rows, ranks.len(), &mut rng);
                let mut index = Vec::new();
                let shape = encode_lora_index(&mut index, &segments(&mixes), max_rank).unwrap();
                let n = index.len();
                let (x, y0) = (
                    rand_vec(&mut rng, rows * din),
                    rand_vec(&mut rng, rows * dout),
                );
                let run = |dev: &Device, pool: &LoraPool, dt: DType| {
                    let idx = Tensor::from_slice(&index, n, dev).unwrap();
                    let xt = Tensor::from_slice(&x, (rows, din), dev)
                        .unwrap()
                        .to_dtype(dt)
                        .unwrap();
                    let yt = Tensor::from_slice(&y0, (rows, dout), dev)
                        .unwrap()
                        .to_dtype(dt)
                        .unwrap();
                    let op = Sgmv {
                        index: &idx,
                        shape,
                        pool,
                        layer: 0,
                        proj: 3,
                    };
                    yt.inplace_op2(&xt, &op).unwrap();
                    host(&yt)
                };
                let want = run(&Device::Cpu, &cpu_pool, DType::F32);
                let got = run(&gpu, &gpu_pool, dt);
                let w = worst(&got, &want);
                println!("sgmv {dt:?} {spread:?} batch {rows}: worst rel err {w:.2e}");
                assert!(
                    w <= tolerance(dt),
                    "sgmv {dt:?} {spread:?} batch {rows}: {w}"
                );
            }
        }
    }
}

#[test]
fn kv_write_and_paged_attention_cuda_match_cpu_in_every_dtype() {
    let Some(gpu) = gpu() else { return };
    let (heads, kvh, hd, bs) = (8, 2, 64, 16);
    let stride = kvh * hd;
    let mut rng = StdRng::seed_from_u64(17);
    for dt in DTYPES {
        for nseq in BATCHES {
            let seqs = scattered_seqs(&mut rng, nseq, bs, 70);
            let (blocks, slots) = blocks_and_slots(&seqs, bs);
            let total = slots.len();
            let (k, v) = (
                rand_vec(&mut rng, total * stride),
                rand_vec(&mut rng, total * stride),
            );
            let mut attn = Vec::new();
            let mut row = 0;
            for s in &seqs {
                attn.push(AttnSeq {
                    row_start: row,
                    rows: s.rows,
                    context_len: s.ctx,
                    block_table: &s.table,
                });
                row += s.rows;
            }
            let mut index = Vec::new();
            let shape = encode_attn_index(&mut index, &attn, bs).unwrap();
            let q = rand_vec(&mut rng, row * heads * hd);
            // rows_dt: the rows' dtype (f32 on the CPU twin, the cache dtype on CUDA).
            let run = |dev: &Device, rows_dt: DType| {
                let cache = Tensor::zeros((2, blocks * bs, kvh, hd), dt, dev).unwrap();
                let t = |v: &[f32], s: (usize, usize)| {
                    Tensor::from_slice(v, s, dev)
                        .unwrap()
                        .to_dtype(rows_dt)
                        .unwrap()
                };
                let st = Tensor::from_slice(&slots, total, dev).unwrap();
                cache
                    .inplace_op3(
                        &t(&k, (total, stride)),
                        &t(&v, (total, stride)),
                        &KvWrite { slots: &st },
                    )
                    .unwrap();
                let it = Tensor::from_slice(&index, index.len(), dev).unwrap();
                let op = PagedAttention {
                    index: &it,
                    shape,
                    heads,
                    block_size: bs,
                };
                let out = t(&q, (row, heads * hd))
                    .apply_op2_no_bwd(&cache, &op)
                    .unwrap();
                (host(&cache), host(&out))
            };
            let (cache_cpu, out_cpu) = run(&Device::Cpu, DType::F32);
            let (cache_gpu, out_gpu) = run(&gpu, dt);
            assert!(
                cache_cpu
                    .iter()
                    .zip(&cache_gpu)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "kv_write {dt:?} batch {nseq}: the caches differ"
            );
            let w = worst(&out_gpu, &out_cpu);
            println!("paged_attention {dt:?} batch {nseq}: worst rel err {w:.2e}");
            assert!(
                w <= tolerance(dt),
                "paged_attention {dt:?} batch {nseq}: {w}"
            );
        }
    }
}
