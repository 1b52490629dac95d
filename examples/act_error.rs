//! Where int8 activations lose the answer: for every projection of every layer of a quantized
//! model, the relative error that rounding the projection's input adds (`‖y_q − y‖ / ‖y‖`, where
//! `y` is the product of the *same* quantized weights, dequantized, with the f32 input), for
//! 8-bit (ggml's, one plane) and two-plane (~15-bit) activations; plus the input's outlier ratio
//! (max |x| / rms). The model runs its exact f32-activation forward over the reference prompts of
//! `tests/fixtures/smollm2/reference.json`, so every projection sees the inputs the f32 model
//! sees. Prints markdown tables (per projection type, and the worst layers).
//!
//! `cargo run --release --example act_error -- MODEL.gguf [reference.json]`

use openlora::model::{LoadOptions, Model, Proj, Weight};
use openlora::ops::cpu::quant::{qlinear, ActPrecision, QMatrix};
use openlora::ops::cpu::{linear, rms_norm, silu_and_mul, RopeTable};

/// Squared-error sums of one (layer, projection): int8, two planes, and the reference's norm.
#[derive(Default, Clone, Copy)]
struct Err2 {
    e8: f64,
    e16: f64,
    norm: f64,
    outlier: f64,
}

fn sq(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum()
}

/// `x · Wᵀ` three ways; returns the exact one and accumulates the errors into `acc`.
fn project(x: &[f32], m: usize, q: &QMatrix, acc: &mut Err2) -> Vec<f32> {
    let (n, k) = (q.rows(), q.cols());
    let mut exact = vec![0f32; m * n];
    linear(x, m, &q.to_f32(), n, k, None, &mut exact);
    for (act, e) in [
        (ActPrecision::Int8, &mut acc.e8),
        (ActPrecision::Int16, &mut acc.e16),
    ] {
        let w = q.clone().with_act_precision(act);
        let mut y = vec![0f32; m * n];
        qlinear(x, m, &w, None, &mut y);
        *e += sq(&y, &exact);
    }
    acc.norm += exact.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
    for row in x.chunks(k) {
        let rms = (row.iter().map(|v| (v * v) as f64).sum::<f64>() / k as f64).sqrt();
        let max = row.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
        acc.outlier = acc.outlier.max(max / rms.max(1e-30));
    }
    exact
}

fn quant(w: &Weight) -> &QMatrix {
    match w {
        Weight::Quant(q) => q,
        Weight::Dense(_) => panic!("load the model with its quantized weights"),
    }
}

/// Causal attention of `t` rows (GQA) over the rotated q, k and v.
fn attention(
    cfg: &openlora::model::ModelConfig,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t: usize,
) -> Vec<f32> {
    let (hd, h, kvh) = (cfg.head_dim, cfg.heads, cfg.kv_heads);
    let mut out = vec![0f32; t * h * hd];
    let scale = 1.0 / (hd as f32).sqrt();
    for i in 0..t {
        for head in 0..h {
            let g = head / (h / kvh);
            let qi = &q[(i * h + head) * hd..][..hd];
            let s: Vec<f32> = (0..=i)
                .map(|j| {
                    let kj = &k[(j * kvh + g) * hd..][..hd];
                    qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            let mx = s.iter().fold(f32::MIN, |a, &b| a.max(b));
            let e: Vec<f32> = s.iter().map(|v| (v - mx).exp()).collect();
            let z: f32 = e.iter().sum();
            let o = &mut out[(i * h + head) * hd..][..hd];
            for (j, p) in e.iter().enumerate() {
                let vj = &v[(j * kvh + g) * hd..][..hd];
                o.iter_mut().zip(vj).for_each(|(o, v)| *o += p / z * v);
            }
        }
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .expect("usage: act_error MODEL.gguf [reference.json]");
    let refs = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "tests/fixtures/smollm2/reference.json".into());
    let model = Model::load_with(path.as_ref(), &LoadOptions::default()).expect("model");
    let (cfg, w) = (model.config().clone(), model.weights.clone());
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&refs).expect("refs")).unwrap();
    let rope = RopeTable::new(&cfg.inv_freq, cfg.max_positions);
    let mut acc = vec![[Err2::default(); 8]; cfg.layers];
    for p in r["prompts"].as_array().unwrap() {
        let ids: Vec<usize> = p["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let (t, d) = (ids.len(), cfg.hidden);
        let pos: Vec<usize> = (0..t).collect();
        let mut h = vec![0f32; t * d];
        for (row, &tok) in h.chunks_mut(d).zip(&ids) {
            w.embed.row(tok, d, row);
        }
        let mut xn = vec![0f32; t * d];
        for (l, lw) in w.layers.iter().enumerate() {
            let a = &mut acc[l];
            let pw = |p: Proj| quant(&lw.proj[p.index()].w);
            rms_norm(&h, &lw.attn_norm, cfg.rms_eps, &mut xn);
            let mut q = project(&xn, t, pw(Proj::Q), &mut a[0]);
            let mut k = project(&xn, t, pw(Proj::K), &mut a[1]);
            let v = project(&xn, t, pw(Proj::V), &mut a[2]);
            rope.apply(&mut q, &pos, cfg.heads);
            rope.apply(&mut k, &pos, cfg.kv_heads);
            let att = attention(&cfg, &q, &k, &v, t);
            let o = project(&att, t, pw(Proj::O), &mut a[3]);
            h.iter_mut().zip(&o).for_each(|(h, o)| *h += o);
            rms_norm(&h, &lw.mlp_norm, cfg.rms_eps, &mut xn);
            let gate = project(&xn, t, pw(Proj::Gate), &mut a[4]);
            let up = project(&xn, t, pw(Proj::Up), &mut a[5]);
            let mut act = vec![0f32; t * cfg.intermediate];
            silu_and_mul(&gate, &up, &mut act);
            let down = project(&act, t, pw(Proj::Down), &mut a[6]);
            h.iter_mut().zip(&down).for_each(|(h, o)| *h += o);
        }
        let mut normed = vec![0f32; t * d];
        rms_norm(&h, &w.final_norm, cfg.rms_eps, &mut normed);
        project(&normed, t, quant(w.lm_head()), &mut acc[cfg.layers - 1][7]);
    }
    report(&acc);
}

fn rel(e: f64, n: f64) -> f64 {
    (e / n.max(1e-300)).sqrt()
}

fn report(acc: &[[Err2; 8]]) {
    let names = ["q", "k", "v", "o", "gate", "up", "down", "lm_head"];
    println!("| projection | int8 rel. error (mean over layers) | worst layer (int8) | two planes (mean) | max outlier ratio |");
    println!("|---|---|---|---|---|");
    for (p, name) in names.iter().enumerate() {
        let rows: Vec<(usize, &Err2)> = acc
            .iter()
            .enumerate()
            .map(|(l, a)| (l, &a[p]))
            .filter(|(_, a)| a.norm > 0.0)
            .collect();
        let n = rows.len() as f64;
        let m8 = rows.iter().map(|(_, a)| rel(a.e8, a.norm)).sum::<f64>() / n;
        let m16 = rows.iter().map(|(_, a)| rel(a.e16, a.norm)).sum::<f64>() / n;
        let (wl, wa) = rows
            .iter()
            .max_by(|a, b| rel(a.1.e8, a.1.norm).total_cmp(&rel(b.1.e8, b.1.norm)))
            .unwrap();
        let out = rows.iter().map(|(_, a)| a.outlier).fold(0f64, f64::max);
        println!(
            "| {name} | {:.2e} | {:.2e} (layer {wl}) | {:.2e} | {out:.0} |",
            m8,
            rel(wa.e8, wa.norm),
            m16
        );
    }
}
