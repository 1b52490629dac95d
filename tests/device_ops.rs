//! The device executor's custom ops (`ops::device`) through candle on the CPU device — i.e. each
//! op's `cpu_fwd` — against independent f64 references: SGMV/BGMV over a slot pool of mixed ranks
//! with rows spread over adapters (distinct, uniform, zipf, identical), weighted two-adapter mixes
//! and rows with no adapter; the batch-invariant linear of the CPU twin; the paged KV write and paged attention over scattered block tables
//! with decode rows, whole prefills and prefill chunks in one call. Batch sizes 1, 3, 7, 133.

mod common;

use candle_core::{DType, Device, Tensor};
use common::op_inputs::{
    blocks_and_slots, mixes, rand_vec, scattered_seqs, segments, BATCHES, SPREADS,
};
use openlora::ops::cpu::AttnSeq;
use openlora::ops::device::{
    encode_attn_index, encode_lora_index, KvWrite, Linear, LoraPool, PagedAttention, Sgmv,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

struct HostPair {
    a: Vec<f32>,
    b: Vec<f32>,
    rank: usize,
    scale: f32,
}

#[test]
fn sgmv_over_the_slot_pool_matches_an_f64_reference() {
    let (din, dout) = (40, 24);
    let ranks = [4, 8, 16, 4, 12, 8];
    let mut rng = StdRng::seed_from_u64(7);
    let host: Vec<HostPair> = ranks
        .iter()
        .enumerate()
        .map(|(i, &r)| HostPair {
            a: rand_vec(&mut rng, r * din),
            b: rand_vec(&mut rng, dout * r),
            rank: r,
            scale: 0.5 + i as f32 / 4.0,
        })
        .collect();
    let dev = Device::Cpu;
    let mut pool = LoraPool::new(1, [(din, dout); 7], ranks.len(), 16, DType::F32, &dev).unwrap();
    for (slot, h) in host.iter().enumerate() {
        let pair = (h.a.as_slice(), h.b.as_slice(), h.rank, h.scale);
        pool.set_pair(slot, 0, 2, Some(pair)).unwrap();
    }
    pool.upload_meta().unwrap();
    for spread in SPREADS {
        for rows in BATCHES {
            let mixes = mixes(spread, rows, ranks.len(), &mut rng);
            let mut index = Vec::new();
            let shape = encode_lora_index(&mut index, &segments(&mixes), pool.max_rank).unwrap();
            let x = rand_vec(&mut rng, rows * din);
            let y0 = rand_vec(&mut rng, rows * dout);
            let n = index.len();
            let idx = Tensor::from_vec(index, n, &dev).unwrap();
            let xt = Tensor::from_slice(&x, (rows, din), &dev).unwrap();
            let yt = Tensor::from_slice(&y0, (rows, dout), &dev).unwrap();
            let op = Sgmv {
                index: &idx,
                shape,
                pool: &pool,
                layer: 0,
                proj: 2,
            };
            yt.inplace_op2(&xt, &op).unwrap();
            let got: Vec<f32> = yt.flatten_all().unwrap().to_vec1().unwrap();
            for r in 0..rows {
                for j in 0..dout {
                    let mut want = y0[r * dout + j] as f64;
                    for &(slot, w) in &mixes[r] {
                        let h = &host[slot as usize];
                        for k in 0..h.rank {
                            let s: f64 = (0..din)
                                .map(|c| x[r * din + c] as f64 * h.a[k * din + c] as f64)
                                .sum();
                            want += (h.scale * w) as f64 * s * h.b[j * h.rank + k] as f64;
                        }
                    }
                    let g = got[r * dout + j] as f64;
                    assert!(
                        (g - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "{spread:?} batch {rows} row {r} col {j}: {g} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn kv_write_and_paged_attention_match_an_f64_reference() {
    let (heads, kvh, hd, bs) = (4, 2, 8, 4);
    let stride = kvh * hd;
    let mut rng = StdRng::seed_from_u64(11);
    for cache_dtype in [DType::F32, DType::BF16] {
        for nseq in BATCHES {
            // Decode rows, whole prefills and prefill chunks, each sequence on scattered blocks.
            let seqs = scattered_seqs(&mut rng, nseq, bs, 40);
            let (blocks, slots) = blocks_and_slots(&seqs, bs);
            let dev = Device::Cpu;
            let cache = Tensor::zeros((2, blocks * bs, kvh, hd), cache_dtype, &dev).unwrap();
            // Every context position's K/V, written by the op (all positions in one call).
            let k: Vec<Vec<f32>> = seqs
                .iter()
                .map(|s| rand_vec(&mut rng, s.ctx * stride))
                .collect();
            let v: Vec<Vec<f32>> = seqs
                .iter()
                .map(|s| rand_vec(&mut rng, s.ctx * stride))
                .collect();
            let total = slots.len();
            let kt = Tensor::from_vec(k.concat(), (total, stride), &dev).unwrap();
            let vt = Tensor::from_vec(v.concat(), (total, stride), &dev).unwrap();
            let st = Tensor::from_vec(slots.clone(), total, &dev).unwrap();
            cache
                .inplace_op3(&kt, &vt, &KvWrite { slots: &st })
                .unwrap();
            // Read back: each slot holds its row (rounded to the cache dtype).
            let back: Vec<f32> = cache
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let (kc, vc) = back.split_at(back.len() / 2);
            let (kflat, vflat) = (k.concat(), v.concat());
            let tol = if cache_dtype == DType::F32 { 0.0 } else { 1e-2 };
            for (i, &s) in slots.iter().enumerate() {
                for e in 0..stride {
                    let (i, o) = (i * stride + e, s as usize * stride + e);
                    assert!((kflat[i] - kc[o]).abs() <= tol, "kv_write K slot {s}");
                    assert!((vflat[i] - vc[o]).abs() <= tol, "kv_write V slot {s}");
                }
            }
            // Queries for each sequence's step rows; the attention index as the executor encodes it.
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
            let n = index.len();
            let it = Tensor::from_vec(index, n, &dev).unwrap();
            let qt = Tensor::from_slice(&q, (row, heads * hd), &dev).unwrap();
            let op = PagedAttention {
                index: &it,
                shape,
                heads,
                block_size: bs,
            };
            let out: Vec<f32> = qt
                .apply_op2_no_bwd(&cache, &op)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let tol = if cache_dtype == DType::F32 {
                1e-5
            } else {
                3e-2
            };
            let mut r0 = 0;
            for (si, s) in seqs.iter().enumerate() {
                for r in 0..s.rows {
                    let pos = s.ctx - s.rows + r;
                    for h in 0..heads {
                        let g = h / (heads / kvh);
                        let qh = &q[(r0 + r) * heads * hd + h * hd..][..hd];
                        let kv = |m: &Vec<Vec<f32>>, p: usize, d: usize| {
                            m[si][p * stride + g * hd + d] as f64
                        };
                        let sc: Vec<f64> = (0..=pos)
                            .map(|p| {
                                (0..hd).map(|d| qh[d] as f64 * kv(&k, p, d)).sum::<f64>()
                                    / (hd as f64).sqrt()
                            })
                            .collect();
                        let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                        for d in 0..hd {
                            let want: f64 = (0..=pos)
                                .map(|p| (sc[p] - m).exp() / z * kv(&v, p, d))
                                .sum();
                            let got = out[(r0 + r) * heads * hd + h * hd + d] as f64;
                            assert!((got - want).abs() < tol, "{cache_dtype:?} batch {nseq} seq {si} row {r} head {h}: {got} vs {want}");
                        }
                    }
                }
                r0 += s.rows;
            }
        }
    }
}

#[test]
fn linear_matches_an_f64_reference_and_each_row_alone_bit_for_bit() {
    let (din, dout) = (67, 45);
    let mut rng = StdRng::seed_from_u64(5);
    let dev = Device::Cpu;
    let w = rand_vec(&mut rng, dout * din);
    let wt = Tensor::from_slice(&w, (dout, din), &dev).unwrap();
    for rows in BATCHES {
        let x = rand_vec(&mut rng, rows * din);
        let run = |x: &[f32], m: usize| -> Vec<f32> {
            let xt = Tensor::from_slice(x, (m, din), &dev).unwrap();
            let y = xt.apply_op2_no_bwd(&wt, &Linear).unwrap();
            y.flatten_all().unwrap().to_vec1().unwrap()
        };
        let all = run(&x, rows);
        for r in 0..rows {
            let alone = run(&x[r * din..(r + 1) * din], 1);
            for j in 0..dout {
                let want: f64 = (0..din)
                    .map(|c| x[r * din + c] as f64 * w[j * din + c] as f64)
                    .sum();
                let got = all[r * dout + j];
                assert!(
                    (got as f64 - want).abs() < 1e-4,
                    "batch {rows} row {r} col {j}"
                );
                assert_eq!(
                    got.to_bits(),
                    alone[j].to_bits(),
                    "batch {rows} row {r} col {j}"
                );
            }
        }
    }
}
