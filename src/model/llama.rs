//! The Llama-family forward pass over one heterogeneous batch: rows of many sequences flattened
//! into `[tokens, hidden]`; base projections shared by all rows, each row's LoRA delta added by
//! SGMV over the batch's segments; attention through each sequence's block table. Logits are
//! computed only for the rows the caller asks for (the last row of each sampling sequence).

use super::{LlamaWeights, ModelConfig};
use crate::kv_cache::KvCache;
use crate::lora::{LoraBatch, Proj};
use crate::ops::cpu::{self, AttnSeq, RopeTable};

/// Everything one forward step needs, built by the engine from the scheduled sequences.
pub struct ForwardBatch<'a> {
    pub tokens: Vec<u32>,
    pub positions: Vec<usize>,
    /// Cache slot of every row.
    pub slots: Vec<usize>,
    pub seqs: Vec<AttnSeq<'a>>,
    pub lora: LoraBatch,
    /// Rows whose logits are returned, in this order.
    pub logit_rows: Vec<usize>,
}

pub struct Llama {
    pub cfg: ModelConfig,
    pub weights: LlamaWeights,
    rope: RopeTable,
}

impl Llama {
    pub fn new(cfg: ModelConfig, weights: LlamaWeights) -> Self {
        let rope = RopeTable::new(&cfg.inv_freq, cfg.max_positions);
        Llama { cfg, weights, rope }
    }

    /// `y = x·Wᵀ (+b) + Σ LoRA deltas` for one projection.
    fn project(&self, layer: usize, p: Proj, x: &[f32], rows: usize, lora: &LoraBatch) -> Vec<f32> {
        let lin = &self.weights.layers[layer].proj[p.index()];
        let mut y = vec![0f32; rows * lin.out];
        cpu::linear(
            x,
            rows,
            &lin.w,
            lin.out,
            lin.inp,
            lin.bias.as_deref(),
            &mut y,
        );
        if !lora.is_empty() {
            cpu::sgmv(x, lin.inp, &lora.segments(layer, p), lin.out, &mut y);
        }
        y
    }

    /// Runs the batch, writing its K/V into `kv`; returns `[logit_rows.len(), vocab]` logits.
    pub fn forward(&self, batch: &ForwardBatch, kv: &mut KvCache) -> Vec<f32> {
        let cfg = &self.cfg;
        let (d, t) = (cfg.hidden, batch.tokens.len());
        let mut h = vec![0f32; t * d];
        for (row, &tok) in h.chunks_mut(d).zip(&batch.tokens) {
            row.copy_from_slice(&self.weights.embed[tok as usize * d..(tok as usize + 1) * d]);
        }
        let mut xn = vec![0f32; t * d];
        let mut attn = vec![0f32; t * cfg.q_dim()];
        for (l, lw) in self.weights.layers.iter().enumerate() {
            cpu::rms_norm(&h, &lw.attn_norm, cfg.rms_eps, &mut xn);
            let mut q = self.project(l, Proj::Q, &xn, t, &batch.lora);
            let mut k = self.project(l, Proj::K, &xn, t, &batch.lora);
            let v = self.project(l, Proj::V, &xn, t, &batch.lora);
            self.rope.apply(&mut q, &batch.positions, cfg.heads);
            self.rope.apply(&mut k, &batch.positions, cfg.kv_heads);
            {
                let (ck, cv) = kv.layer_mut(l);
                cpu::write_kv(&k, &v, &batch.slots, cfg.kv_dim(), ck, cv);
            }
            cpu::paged_attention(&q, &batch.seqs, kv.view(l), cfg.heads, &mut attn);
            let o = self.project(l, Proj::O, &attn, t, &batch.lora);
            add_assign(&mut h, &o);

            cpu::rms_norm(&h, &lw.mlp_norm, cfg.rms_eps, &mut xn);
            let gate = self.project(l, Proj::Gate, &xn, t, &batch.lora);
            let up = self.project(l, Proj::Up, &xn, t, &batch.lora);
            let mut act = vec![0f32; t * cfg.intermediate];
            cpu::silu_and_mul(&gate, &up, &mut act);
            let down = self.project(l, Proj::Down, &act, t, &batch.lora);
            add_assign(&mut h, &down);
        }
        let n = batch.logit_rows.len();
        let mut last = Vec::with_capacity(n * d);
        for &r in &batch.logit_rows {
            last.extend_from_slice(&h[r * d..(r + 1) * d]);
        }
        let mut normed = vec![0f32; n * d];
        cpu::rms_norm(&last, &self.weights.final_norm, cfg.rms_eps, &mut normed);
        let mut logits = vec![0f32; n * cfg.vocab_size];
        cpu::linear(
            &normed,
            n,
            self.weights.lm_head(),
            cfg.vocab_size,
            d,
            None,
            &mut logits,
        );
        logits
    }
}

fn add_assign(h: &mut [f32], delta: &[f32]) {
    for (a, b) in h.iter_mut().zip(delta) {
        *a += b;
    }
}
