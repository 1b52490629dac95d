//! The Llama-family forward pass over one heterogeneous batch: rows of many sequences flattened
//! into `[tokens, hidden]`; base projections shared by all rows (dense f32 or quantized weights),
//! each row's LoRA delta added by SGMV over the batch's segments; attention through each
//! sequence's block table. Logits are computed only for the plan's `logit_rows`. No step reads
//! another row's values except through attention of its own sequence, so every row's result is
//! the same alone or batched.

use super::kv_store::KvStore;
use super::packed_slots::{PackedAdapter, PackedPair};
use crate::exec::StepPlan;
use crate::lora::LoraAdapter;
use crate::model::{LlamaWeights, ModelConfig, Proj, Weight};
use crate::ops::cpu::quant::{qlinear, qlinear_lora, qlinear_many, QProj};
use crate::ops::cpu::{self, HalfLora, Int8Lora, LoraSegment, LoraTerm, RopeTable};
use std::ops::Range;
use std::sync::Arc;

/// The step's LoRA segments with their slots resolved to adapters of type `A`.
pub type Resolved<A> = Vec<(Range<usize>, Vec<(Arc<A>, f32)>)>;

/// The step's LoRA: the f32 adapters as loaded (exact path) or their bf16 or int8 copies (the
/// quantized path, see `packed_slots`).
pub enum ResolvedLora {
    F32(Resolved<LoraAdapter>),
    Bf16(Resolved<PackedAdapter<HalfLora>>),
    Int8(Resolved<PackedAdapter<Int8Lora>>),
}

impl ResolvedLora {
    fn is_empty(&self) -> bool {
        match self {
            ResolvedLora::F32(r) => r.is_empty(),
            ResolvedLora::Bf16(r) => r.is_empty(),
            ResolvedLora::Int8(r) => r.is_empty(),
        }
    }
}

pub struct CpuModel {
    pub cfg: ModelConfig,
    pub weights: Arc<LlamaWeights>,
    rope: RopeTable,
}

/// `y[m, n] = x[m, k] · Wᵀ (+ b)` for any weight format.
fn matmul(x: &[f32], m: usize, w: &Weight, n: usize, k: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    match w {
        Weight::Dense(w) => cpu::linear(x, m, w, n, k, bias, &mut y),
        Weight::Quant(q) => qlinear(x, m, q, bias, &mut y),
    }
    y
}

/// The SGMV segments of one projection of one layer (terms whose adapter targets it).
fn segments(lora: &Resolved<LoraAdapter>, layer: usize, proj: Proj) -> Vec<LoraSegment<'_>> {
    lora.iter()
        .filter_map(|(rows, mix)| {
            let terms: Vec<LoraTerm> = mix
                .iter()
                .filter_map(|(ad, w)| {
                    ad.get(layer, proj).map(|lw| LoraTerm {
                        a: &lw.a,
                        b: &lw.b,
                        rank: lw.rank,
                        coeff: lw.scale * w,
                    })
                })
                .collect();
            (!terms.is_empty()).then(|| LoraSegment {
                rows: rows.clone(),
                terms,
            })
        })
        .collect()
}

/// [`segments`] for compact copies: `(rows, terms)` of the terms whose adapter targets `proj`.
fn packed_segments<P: PackedPair>(
    lora: &Resolved<PackedAdapter<P>>,
    layer: usize,
    proj: Proj,
) -> Vec<(Range<usize>, Vec<P::Term<'_>>)> {
    lora.iter()
        .filter_map(|(rows, mix)| {
            let terms: Vec<P::Term<'_>> = mix
                .iter()
                .filter_map(|(ad, w)| {
                    ad.layers[layer][proj.index()]
                        .as_ref()
                        .map(|(lora, scale)| lora.term(scale * w))
                })
                .collect();
            (!terms.is_empty()).then(|| (rows.clone(), terms))
        })
        .collect()
}

/// The quantized projections `ps` of layer `l` with their compact adapters' deltas.
fn packed_lora<P: PackedPair, const N: usize>(
    lora: &Resolved<PackedAdapter<P>>,
    l: usize,
    ps: [Proj; N],
    x: &[f32],
    rows: usize,
    qs: &[QProj],
) -> Vec<Vec<f32>> {
    let segs = ps.map(|p| packed_segments(lora, l, p));
    let refs = segs.each_ref().map(|s| seg_refs(s));
    qlinear_lora(x, rows, qs, &refs.each_ref().map(|s| &s[..]))
}

/// `(rows, terms)` segments as the SGMV kernels take them.
fn seg_refs<T>(segs: &[(Range<usize>, Vec<T>)]) -> Vec<(Range<usize>, &[T])> {
    segs.iter().map(|(r, t)| (r.clone(), &t[..])).collect()
}

/// Adds the deltas of compact adapters to `y` (dense projections).
fn add_packed<P: PackedPair>(
    lora: &Resolved<PackedAdapter<P>>,
    l: usize,
    p: Proj,
    x: &[f32],
    inp: usize,
    out: usize,
    y: &mut [f32],
) {
    let segs = packed_segments(lora, l, p);
    cpu::sgmv_pairs(x, inp, &seg_refs(&segs), out, y)
}

/// Adds the LoRA deltas of projection `p` of layer `l` to `y`.
fn add_lora(
    lora: &ResolvedLora,
    l: usize,
    p: Proj,
    x: &[f32],
    inp: usize,
    out: usize,
    y: &mut [f32],
) {
    match lora {
        ResolvedLora::F32(r) => cpu::sgmv(x, inp, &segments(r, l, p), out, y),
        ResolvedLora::Bf16(r) => add_packed(r, l, p, x, inp, out, y),
        ResolvedLora::Int8(r) => add_packed(r, l, p, x, inp, out, y),
    }
}

fn add_assign(h: &mut [f32], delta: &[f32]) {
    for (a, b) in h.iter_mut().zip(delta) {
        *a += b;
    }
}

impl CpuModel {
    pub fn new(cfg: ModelConfig, weights: Arc<LlamaWeights>) -> Self {
        let rope = RopeTable::new(&cfg.inv_freq, cfg.max_positions);
        CpuModel { cfg, weights, rope }
    }

    /// `y = x·Wᵀ (+b) + Σ LoRA deltas` for one projection.
    fn project(&self, l: usize, p: Proj, x: &[f32], rows: usize, lora: &ResolvedLora) -> Vec<f32> {
        let [y] = self.project_many(l, [p], x, rows, lora);
        y
    }

    /// [`Self::project`] for several projections of the same input; quantized weights run in one
    /// parallel region (bit-identical to separate products).
    fn project_many<const N: usize>(
        &self,
        l: usize,
        ps: [Proj; N],
        x: &[f32],
        rows: usize,
        lora: &ResolvedLora,
    ) -> [Vec<f32>; N] {
        let lins = ps.map(|p| &self.weights.layers[l].proj[p.index()]);
        let quant: Option<Vec<QProj>> = lins
            .iter()
            .map(|lin| match &lin.w {
                Weight::Quant(q) => Some((q, lin.bias.as_deref())),
                Weight::Dense(_) => None,
            })
            .collect();
        let one = |v: Vec<Vec<f32>>| -> [Vec<f32>; N] {
            v.try_into().expect("one output per projection")
        };
        match quant {
            // Quantized with adapters: the shrinks run inside the products' parallel region.
            Some(qs) if !lora.is_empty() => one(match lora {
                ResolvedLora::F32(r) => {
                    let segs = ps.map(|p| segments(r, l, p));
                    let segs = segs.each_ref().map(|s| {
                        s.iter()
                            .map(|s| (s.rows.clone(), &s.terms[..]))
                            .collect::<Vec<_>>()
                    });
                    qlinear_lora(x, rows, &qs, &segs.each_ref().map(|s| &s[..]))
                }
                ResolvedLora::Bf16(r) => packed_lora(r, l, ps, x, rows, &qs),
                ResolvedLora::Int8(r) => packed_lora(r, l, ps, x, rows, &qs),
            }),
            Some(qs) if N > 1 => one(qlinear_many(x, rows, &qs)),
            _ => {
                let mut ys =
                    lins.map(|lin| matmul(x, rows, &lin.w, lin.out, lin.inp, lin.bias.as_deref()));
                if !lora.is_empty() {
                    for ((y, lin), p) in ys.iter_mut().zip(&lins).zip(ps) {
                        add_lora(lora, l, p, x, lin.inp, lin.out, y);
                    }
                }
                ys
            }
        }
    }

    /// Runs the plan, writing its K/V into `kv`; returns `[logit_rows.len(), vocab]` logits.
    pub fn forward(&self, plan: &StepPlan, lora: &ResolvedLora, kv: &mut KvStore) -> Vec<f32> {
        let cfg = &self.cfg;
        let (d, t) = (cfg.hidden, plan.tokens.len());
        let mut h = vec![0f32; t * d];
        for (row, &tok) in h.chunks_mut(d).zip(&plan.tokens) {
            self.weights.embed.row(tok as usize, d, row);
        }
        let seqs = plan.attn_seqs();
        let mut xn = vec![0f32; t * d];
        let mut attn = vec![0f32; t * cfg.q_dim()];
        for (l, lw) in self.weights.layers.iter().enumerate() {
            cpu::rms_norm(&h, &lw.attn_norm, cfg.rms_eps, &mut xn);
            let [mut q, mut k, v] = self.project_many(l, [Proj::Q, Proj::K, Proj::V], &xn, t, lora);
            self.rope.apply(&mut q, &plan.positions, cfg.heads);
            self.rope.apply(&mut k, &plan.positions, cfg.kv_heads);
            kv.write(l, &k, &v, &plan.kv_slots);
            kv.attention(l, &q, &seqs, cfg.heads, &mut attn);
            let o = self.project(l, Proj::O, &attn, t, lora);
            add_assign(&mut h, &o);

            cpu::rms_norm(&h, &lw.mlp_norm, cfg.rms_eps, &mut xn);
            let [gate, up] = self.project_many(l, [Proj::Gate, Proj::Up], &xn, t, lora);
            let mut act = vec![0f32; t * cfg.intermediate];
            cpu::silu_and_mul(&gate, &up, &mut act);
            let down = self.project(l, Proj::Down, &act, t, lora);
            add_assign(&mut h, &down);
        }
        let n = plan.logit_rows.len();
        let mut last = Vec::with_capacity(n * d);
        for &r in &plan.logit_rows {
            last.extend_from_slice(&h[r * d..(r + 1) * d]);
        }
        let mut normed = vec![0f32; n * d];
        cpu::rms_norm(&last, &self.weights.final_norm, cfg.rms_eps, &mut normed);
        matmul(&normed, n, self.weights.lm_head(), cfg.vocab_size, d, None)
    }
}
