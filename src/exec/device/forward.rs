//! The Llama-family forward pass written once over candle tensors, on whatever `Device` the
//! tensors live: rows of many sequences flattened into `[rows, hidden]`; base projections
//! (`DeviceLinear`) shared by all rows, each row's LoRA delta added in place by the `Sgmv` op over the
//! slot pool; rope, rms_norm, silu from candle/candle-nn; K/V written and attended through the
//! paged custom ops. Logits are computed only for the plan's logit rows. The same steps, in the
//! same order, as `exec::cpu::forward`.

use super::kv_cache::DeviceKv;
use super::slot_pool::SlotPool;
use super::step_index::{Part, StepIndex};
use super::weights::{DeviceLinear, DeviceWeights, LinearWeight};
use crate::model::{ModelConfig, Proj};
use crate::ops::cpu::RopeTable;
use crate::ops::device::Sgmv;
use candle_core::{Device, Result, Tensor};
use candle_nn::ops::rms_norm;
use candle_nn::rotary_emb::rope_thd;

pub struct DeviceModel {
    pub cfg: ModelConfig,
    pub weights: DeviceWeights,
    /// `[max_positions, head_dim / 2]`: the CPU executor's own tables, so both rotate by identical angles.
    cos: Tensor,
    sin: Tensor,
}

/// What one step reads besides the weights.
pub struct StepInputs<'a> {
    pub index: &'a StepIndex,
    pub kv: &'a DeviceKv,
    /// `None` when no row of the step has an adapter.
    pub pool: Option<&'a SlotPool>,
}

impl DeviceModel {
    pub fn new(cfg: ModelConfig, weights: DeviceWeights, dev: &Device) -> Result<Self> {
        let rope = RopeTable::new(&cfg.inv_freq, cfg.max_positions);
        let (half, cos, sin) = rope.tables();
        let n = cos.len() / half.max(1);
        let dt = weights.dtype;
        let cos = Tensor::from_slice(cos, (n, half), dev)?.to_dtype(dt)?;
        let sin = Tensor::from_slice(sin, (n, half), dev)?.to_dtype(dt)?;
        Ok(DeviceModel {
            cfg,
            weights,
            cos,
            sin,
        })
    }

    /// `y = x·Wᵀ (+b) + Σ LoRA deltas` for one projection.
    fn project(
        &self,
        l: usize,
        p: Proj,
        x: &Tensor,
        s: &StepInputs,
        lora: &Tensor,
    ) -> Result<Tensor> {
        let y = self.weights.layers[l].proj[p.index()].forward(x)?;
        if let Some(pool) = s.pool {
            let op = Sgmv {
                index: lora,
                shape: s.index.lora,
                pool: &pool.pool,
                layer: l,
                proj: p.index(),
            };
            y.inplace_op2(x, &op)?;
        }
        Ok(y)
    }

    /// Rotates `[rows, heads * head_dim]` by the rows' positions (`cos`/`sin` gathered per row).
    fn rope(&self, x: &Tensor, heads: usize, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (t, hd) = (x.dim(0)?, self.cfg.head_dim);
        rope_thd(&x.reshape((1, t, heads, hd))?, cos, sin)?.reshape((t, heads * hd))
    }

    /// Runs one step; returns `[logit_rows, vocab]` logits (on the device), `None` without logit rows.
    pub fn forward(&self, s: &StepInputs) -> Result<Option<Tensor>> {
        let (cfg, idx) = (&self.cfg, s.index);
        let (positions, slots, attn_idx, lora) = (
            idx.part(Part::Positions)?,
            idx.part(Part::KvSlots)?,
            idx.part(Part::Attn)?,
            idx.part(Part::Lora)?,
        );
        let mut h = self
            .weights
            .embed
            .index_select(&idx.part(Part::Tokens)?, 0)?;
        let cos = self.cos.index_select(&positions, 0)?.unsqueeze(0)?;
        let sin = self.sin.index_select(&positions, 0)?.unsqueeze(0)?;
        for (l, lw) in self.weights.layers.iter().enumerate() {
            let xn = rms_norm(&h, &lw.attn_norm, cfg.rms_eps)?;
            let q = self.project(l, Proj::Q, &xn, s, &lora)?;
            let k = self.project(l, Proj::K, &xn, s, &lora)?;
            let v = self.project(l, Proj::V, &xn, s, &lora)?;
            let q = self.rope(&q, cfg.heads, &cos, &sin)?;
            let k = self.rope(&k, cfg.kv_heads, &cos, &sin)?;
            s.kv.write(l, &k, &v, &slots)?;
            let attn = s.kv.attention(l, &q, &attn_idx, idx.attn, cfg.heads)?;
            h = (h + self.project(l, Proj::O, &attn, s, &lora)?)?;

            let xn = rms_norm(&h, &lw.mlp_norm, cfg.rms_eps)?;
            let gate = self.project(l, Proj::Gate, &xn, s, &lora)?;
            let up = self.project(l, Proj::Up, &xn, s, &lora)?;
            let act = (gate.silu()? * up)?;
            h = (h + self.project(l, Proj::Down, &act, s, &lora)?)?;
        }
        if idx.is_empty(Part::LogitRows) {
            return Ok(None);
        }
        let last = h.index_select(&idx.part(Part::LogitRows)?, 0)?;
        let normed = rms_norm(&last, &self.weights.final_norm, cfg.rms_eps)?;
        let head = DeviceLinear {
            w: LinearWeight::Dense(self.weights.lm_head().clone()),
            bias: None,
        };
        Ok(Some(head.forward(&normed)?))
    }
}
