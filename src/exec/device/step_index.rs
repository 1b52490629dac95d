//! The plan's small index tensors, uploaded once per step as one `u32` tensor and handed to every
//! op as views: tokens, positions, KV slots, logit rows, the attention index (each sequence's rows,
//! context and block table) and the LoRA index (segments of rows with their `(slot, weight)`
//! terms). The ops own their encodings (`ops::device`); this type only lays the parts end to end.

use crate::exec::StepPlan;
use crate::ops::device::{encode_attn_index, encode_lora_index};
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
}

/// One LoRA segment with its terms as `(slot, weight)`.
pub type LoraRows = (Range<usize>, Vec<(u32, f32)>);

impl StepIndex {
    pub fn upload(plan: &StepPlan, lora: &[LoraRows], dev: &Device) -> Result<Self> {
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
        mark(&mut buf, Part::Attn, &|b| {
            for s in &plan.seqs {
                encode_attn_index(b, s.row_start, s.rows, s.context_len, &s.block_table);
            }
        });
        mark(&mut buf, Part::Lora, &|b| {
            for (rows, terms) in lora {
                encode_lora_index(b, rows.clone(), terms);
            }
        });
        let n = buf.len();
        Ok(StepIndex {
            buf: Tensor::from_vec(buf, n, dev)?,
            parts,
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
