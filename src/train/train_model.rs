//! The Llama forward for training, over candle tensors with autograd on one candle `Device` (the
//! CPU, or CUDA): base weights frozen (dequantized once to f32 constants on that device, multiplied
//! through `FrozenLinear`, whose CPU backward yields only the input's gradient), LoRA pairs as
//! `Var`s on the same device, every per-batch tensor created there, and only differentiable forms of rms_norm,
//! rope and softmax (`grad_ops`). The math is the inference engine's f32 path: HF layout, q/k in
//! rotate-half order, GQA, `y = x W^T + scale * B(A(dropout(x)))`.

use super::batch::Batch;
use super::dropout::Dropout;
use super::frozen_linear::FrozenLinear;
use super::grad_ops::{log_softmax_last_dim, rms_norm, rope, rope_tables, softmax_last_dim};
use super::lora_params::LoraParams;
use super::tensor_io::cerr;
use crate::error::Result;
use crate::model::{LlamaWeights, ModelConfig, Proj, Weight};
use candle_core::{DType, Device, Tensor};

struct FrozenLayer {
    attn_norm: Tensor,
    mlp_norm: Tensor,
    /// By `Proj::index()`.
    proj: Vec<FrozenLinear>,
    bias: Vec<Option<Tensor>>,
}

pub struct TrainModel {
    cfg: ModelConfig,
    dtype: DType,
    device: Device,
    embed: Tensor,
    layers: Vec<FrozenLayer>,
    final_norm: Tensor,
    lm_head: FrozenLinear,
}

/// A weight matrix as dense `[rows, cols]` of `dtype` on `dev`.
fn dense(w: &Weight, rows: usize, cols: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let v = match w {
        Weight::Dense(v) => v.clone(),
        Weight::Quant(q) => q.to_f32(),
    };
    Tensor::from_vec(v, (rows, cols), dev)
        .and_then(|t| t.to_dtype(dtype))
        .map_err(cerr)
}

fn vector(v: &[f32], dtype: DType, dev: &Device) -> Result<Tensor> {
    Tensor::from_slice(v, v.len(), dev)
        .and_then(|t| t.to_dtype(dtype))
        .map_err(cerr)
}

impl TrainModel {
    /// Dequantizes `w` (any stored format) into frozen f32 constants.
    pub fn new(cfg: &ModelConfig, w: &LlamaWeights) -> Result<Self> {
        Self::with_dtype(cfg, w, DType::F32)
    }

    /// The same with constants of `dtype` (f64: exact gradient checks).
    pub fn with_dtype(cfg: &ModelConfig, w: &LlamaWeights, dtype: DType) -> Result<Self> {
        Self::on(cfg, w, dtype, &Device::Cpu)
    }

    /// The same on `device` (CUDA: frozen weights and every tensor of the run on the GPU).
    pub fn on(cfg: &ModelConfig, w: &LlamaWeights, dtype: DType, device: &Device) -> Result<Self> {
        Self::build(cfg, w, dtype, device, !device.is_cpu())
    }

    /// On the CPU, but through the generic (device) path every non-CPU device takes: the twin
    /// of the CUDA path that CPU tests compare with the CPU path.
    pub fn generic_on_cpu(cfg: &ModelConfig, w: &LlamaWeights, dtype: DType) -> Result<Self> {
        Self::build(cfg, w, dtype, &Device::Cpu, true)
    }

    fn build(
        cfg: &ModelConfig,
        w: &LlamaWeights,
        dtype: DType,
        dev: &Device,
        generic: bool,
    ) -> Result<Self> {
        let frozen = |t: Tensor| FrozenLinear::with_path(t, generic).map_err(cerr);
        let embed = dense(&w.embed, cfg.vocab_size, cfg.hidden, dtype, dev)?;
        let lm_head = match &w.lm_head {
            Some(h) => dense(h, cfg.vocab_size, cfg.hidden, dtype, dev)?,
            None => embed.clone(),
        };
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in &w.layers {
            let mut proj = Vec::with_capacity(7);
            let mut bias = Vec::with_capacity(7);
            for p in Proj::ALL {
                let lin = &l.proj[p.index()];
                proj.push(frozen(dense(&lin.w, lin.out, lin.inp, dtype, dev)?)?);
                bias.push(
                    lin.bias
                        .as_deref()
                        .map(|b| vector(b, dtype, dev))
                        .transpose()?,
                );
            }
            layers.push(FrozenLayer {
                attn_norm: vector(&l.attn_norm, dtype, dev)?,
                mlp_norm: vector(&l.mlp_norm, dtype, dev)?,
                proj,
                bias,
            });
        }
        Ok(TrainModel {
            cfg: cfg.clone(),
            dtype,
            device: dev.clone(),
            embed,
            layers,
            final_norm: vector(&w.final_norm, dtype, dev)?,
            lm_head: frozen(lm_head)?,
        })
    }

    /// Where every tensor of the run lives (LoRA pairs are created here too).
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The summed negative log-likelihood of the batch's targets (a scalar, differentiable in the
    /// LoRA pairs). Dropout applies when `dropout` is given.
    pub fn loss(
        &self,
        batch: &Batch,
        lora: Option<&LoraParams>,
        dropout: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let logits = self.target_logits(batch, lora, dropout)?;
        let n = batch.targets();
        let targets = Tensor::from_slice(&batch.target_ids, (n, 1), &self.device).map_err(cerr)?;
        (|| {
            log_softmax_last_dim(&logits)?
                .gather(&targets, 1)?
                .neg()?
                .sum_all()
        })()
        .map_err(cerr)
    }

    /// Logits `[targets, vocab]` of the rows whose next token is a target.
    pub fn target_logits(
        &self,
        batch: &Batch,
        lora: Option<&LoraParams>,
        dropout: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let h = self.hidden(batch, lora, dropout)?;
        let rows =
            Tensor::from_slice(&batch.target_rows, batch.targets(), &self.device).map_err(cerr)?;
        let h = h.index_select(&rows, 0).map_err(cerr)?;
        let h = rms_norm(&h, &self.final_norm, self.cfg.rms_eps as f64).map_err(cerr)?;
        self.lm_head.forward(&h).map_err(cerr)
    }

    /// Logits of every position of one sequence (`[len, vocab]`), no dropout: for checks.
    pub fn logits(&self, ids: &[u32], lora: Option<&LoraParams>) -> Result<Vec<f32>> {
        let ex = super::batch::TrainExample {
            ids: ids.to_vec(),
            loss: vec![false; ids.len()],
        };
        let batch = Batch::new(&[&ex], 0);
        let h = self.hidden(&batch, lora, None)?;
        let h = rms_norm(&h, &self.final_norm, self.cfg.rms_eps as f64).map_err(cerr)?;
        super::tensor_io::flat(&self.lm_head.forward(&h).map_err(cerr)?)
    }

    /// The last layer's output `[b * t, hidden]` (before the final norm).
    fn hidden(
        &self,
        batch: &Batch,
        lora: Option<&LoraParams>,
        mut dropout: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let dev = &self.device;
        let ids = Tensor::from_slice(&batch.ids, batch.ids.len(), dev).map_err(cerr)?;
        let mut h = self.embed.index_select(&ids, 0).map_err(cerr)?;
        let mask = batch.mask(dev)?.to_dtype(self.dtype).map_err(cerr)?;
        let (cos, sin) = rope_tables(&self.cfg.inv_freq, batch.t).map_err(cerr)?;
        let on_dev = |t: Tensor| t.to_dtype(self.dtype).and_then(|t| t.to_device(dev));
        let (cos, sin) = (on_dev(cos).map_err(cerr)?, on_dev(sin).map_err(cerr)?);
        for l in 0..self.layers.len() {
            let mut ctx = LayerCtx {
                model: self,
                layer: l,
                lora,
                dropout: dropout.as_deref_mut(),
            };
            h = ctx.block(&h, batch, &mask, (&cos, &sin)).map_err(cerr)?;
        }
        Ok(h)
    }
}

/// One layer's forward with the run's LoRA pairs and dropout.
struct LayerCtx<'a> {
    model: &'a TrainModel,
    layer: usize,
    lora: Option<&'a LoraParams>,
    dropout: Option<&'a mut Dropout>,
}

impl LayerCtx<'_> {
    fn block(
        &mut self,
        h: &Tensor,
        batch: &Batch,
        mask: &Tensor,
        rope_cs: (&Tensor, &Tensor),
    ) -> candle_core::Result<Tensor> {
        let (cfg, w) = (&self.model.cfg, &self.model.layers[self.layer]);
        let eps = cfg.rms_eps as f64;
        let x = rms_norm(h, &w.attn_norm, eps)?;
        let q = self.linear(Proj::Q, &x)?;
        let k = self.linear(Proj::K, &x)?;
        let v = self.linear(Proj::V, &x)?;
        let att = attention(cfg, (&q, &k, &v), batch, mask, rope_cs)?;
        let h = (h + self.linear(Proj::O, &att)?)?;
        let x = rms_norm(&h, &w.mlp_norm, eps)?;
        let gate = self.linear(Proj::Gate, &x)?;
        let up = self.linear(Proj::Up, &x)?;
        let down = self.linear(Proj::Down, &(gate.silu()? * up)?)?;
        h + down
    }

    /// `x W^T (+ bias) + scale * B(A(dropout(x)))` for `x`: `[rows, in]`.
    fn linear(&mut self, p: Proj, x: &Tensor) -> candle_core::Result<Tensor> {
        let w = &self.model.layers[self.layer];
        let mut y = w.proj[p.index()].forward(x)?;
        if let Some(b) = &w.bias[p.index()] {
            y = y.broadcast_add(b)?;
        }
        let Some(lora) = self.lora else { return Ok(y) };
        let Some(pair) = lora.get(self.layer, p) else {
            return Ok(y);
        };
        let x = match self.dropout.as_deref_mut() {
            Some(d) => d.apply(x)?,
            None => x.clone(),
        };
        let delta = x.matmul(&pair.a.t()?)?.matmul(&pair.b.t()?)?;
        y + (delta * lora.settings.scale())?
    }
}

/// Causal self-attention with GQA over `[b * t, dim]` projections; returns `[b * t, q_dim]`.
fn attention(
    cfg: &ModelConfig,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    batch: &Batch,
    mask: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
) -> candle_core::Result<Tensor> {
    let (b, t, d) = (batch.b, batch.t, cfg.head_dim);
    let (h, kvh) = (cfg.heads, cfg.kv_heads);
    let heads = |x: &Tensor, n: usize| x.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous();
    // Query heads h = g * rep + r share key head g (HF repeat_kv): grouping the queries of a key
    // head into one [rep * t, d] matrix multiplies them with that head's keys without copies.
    let rep = h / kvh;
    let q = rope(&heads(q, h)?, cos, sin)?.reshape((b, kvh, rep * t, d))?;
    let k = rope(&heads(k, kvh)?, cos, sin)?;
    let v = heads(v, kvh)?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
    let scores = scores.reshape((b, h, t, t))?.broadcast_add(mask)?;
    let p = softmax_last_dim(&scores)?.reshape((b, kvh, rep * t, t))?;
    let out = p.matmul(&v)?.reshape((b, h, t, d))?;
    out.transpose(1, 2)?.contiguous()?.reshape((b * t, h * d))
}
