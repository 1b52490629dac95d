//! The plan's small index tensors, uploaded once per step as one `u32` tensor and handed to every
//! op as views: tokens, positions, KV slots, logit rows, the attention index (each sequence's rows,
//! context and block table) and the LoRA index (segments of rows with their `(slot, weight)`
//! terms). The ops own their encodings (`ops::device`); this type only lays the parts end to end.

use crate::exec::StepPlan;
use crate::ops::device::{encode_attn_index, encode_lora_index, AttnShape, LoraShape};
use candle_core::{Device, Result, Tensor};
use std::ops::Range;

/// The parts of the upload, in order.
#[derive(Clone, Copy)]
pub enum Part {
    Tokens,
    Positions,
    KvSlots,
    LogitRows,
    Attn,
    Lora,
}

pub struct StepIndex {
    buf: Tensor,
    parts: [Range<usize>; 6],
    pub attn: AttnShape,
    pub lora: LoraShape,
}

/// One LoRA segment with its terms as `(slot, weight)`.
pub type LoraRows = (Range<usize>, Vec<(u32, f32)>);

impl StepIndex {
    /// Encodes and uploads the plan's indices (`max_rank`: the slot pool's, for the LoRA scratch).
    pub fn upload(
        plan: &StepPlan,
        lora: &[LoraRows],
        max_rank: usize,
        block_size: usize,
        dev: &Device,
    ) -> Result<Self> {
        let mut buf: Vec<u32> = Vec::with_capacity(4 * plan.rows() + 64);
        let mut parts: [Range<usize>; 6] = Default::default();
        let mut mark = |buf: &mut Vec<u32>, p: Part, fill: &dyn Fn(&mut Vec<u32>)| {
            let start = buf.len();
            fill(buf);
            parts[p as usize] = start..buf.len();
        };
        mark(&mut buf, Part::Tokens, &|b| b.extend(&plan.tokens));
        mark(&mut buf, Part::Positions, &|b| {
            b.extend(plan.positions.iter().map(|&p| p as u32))
        });
        mark(&mut buf, Part::KvSlots, &|b| {
            b.extend(plan.kv_slots.iter().map(|&s| s as u32))
        });
        mark(&mut buf, Part::LogitRows, &|b| {
            b.extend(plan.logit_rows.iter().map(|&r| r as u32))
        });
        let seqs = plan.attn_seqs();
        let start = buf.len();
        let attn = encode_attn_index(&mut buf, &seqs, block_size)?;
        parts[Part::Attn as usize] = start..buf.len();
        let start = buf.len();
        let lora = encode_lora_index(&mut buf, lora, max_rank)?;
        parts[Part::Lora as usize] = start..buf.len();
        let n = buf.len();
        Ok(StepIndex {
            buf: Tensor::from_vec(buf, n, dev)?,
            parts,
            attn,
            lora,
        })
    }

    /// A view of one part.
    pub fn part(&self, p: Part) -> Result<Tensor> {
        let r = &self.parts[p as usize];
        self.buf.narrow(0, r.start, r.len())
    }

    pub fn is_empty(&self, p: Part) -> bool {
        self.parts[p as usize].is_empty()
    }
}
