//! One forward step as plain integers: what the engine hands an executor. Rows of many sequences
//! are flattened into one batch; each sequence's rows are contiguous (`SeqSlice`), every row has a
//! token, a position and the KV cache slot its K/V go to; LoRA segments name adapter *slots* of
//! the pool (never adapters); `logit_rows` are the rows whose logits come back, in that order.
//! `block_copies` (copy-on-write of shared KV blocks) are performed before any row is written.

use crate::kv_cache::BlockCopy;
use crate::lora::AdapterSlot;
use crate::ops::cpu::AttnSeq;
use std::ops::Range;

#[derive(Debug, Clone, Default)]
pub struct StepPlan {
    pub tokens: Vec<u32>,
    pub positions: Vec<usize>,
    /// KV cache slot (`block * block_size + offset`) of every row.
    pub kv_slots: Vec<usize>,
    pub seqs: Vec<SeqSlice>,
    /// Row ranges with their adapter mix; rows in no segment use the base model only.
    pub lora: Vec<LoraSegment>,
    pub logit_rows: Vec<usize>,
    /// Whole-block KV copies (every layer) to perform before the step.
    pub block_copies: Vec<BlockCopy>,
}

/// One sequence's rows in the batch.
#[derive(Debug, Clone)]
pub struct SeqSlice {
    pub row_start: usize,
    pub rows: usize,
    /// Tokens in the cache after this step (previous context + the new rows).
    pub context_len: usize,
    pub block_table: Vec<u32>,
}

/// Contiguous rows sharing one adapter mix: `(slot, weight)` terms applied in order.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSegment {
    pub rows: Range<usize>,
    pub terms: Vec<(AdapterSlot, f32)>,
}

impl StepPlan {
    pub fn rows(&self) -> usize {
        self.tokens.len()
    }

    /// The sequences as the attention ops read them (rows, context, block table), in order.
    pub fn attn_seqs(&self) -> Vec<AttnSeq<'_>> {
        self.seqs
            .iter()
            .map(|s| AttnSeq {
                row_start: s.row_start,
                rows: s.rows,
                context_len: s.context_len,
                block_table: &s.block_table,
            })
            .collect()
    }

    /// Appends one sequence's rows; merges its LoRA rows into the previous segment when the mix is
    /// the same and the rows are adjacent (a batch sorted by mix gets one segment per mix).
    pub fn push_seq(
        &mut self,
        tokens: &[u32],
        first_pos: usize,
        slot_of: impl Fn(usize) -> usize,
        block_table: &[u32],
        mix: &[(AdapterSlot, f32)],
        wants_logits: bool,
    ) {
        let start = self.tokens.len();
        for (i, &t) in tokens.iter().enumerate() {
            self.tokens.push(t);
            self.positions.push(first_pos + i);
            self.kv_slots.push(slot_of(first_pos + i));
        }
        let end = self.tokens.len();
        self.seqs.push(SeqSlice {
            row_start: start,
            rows: tokens.len(),
            context_len: first_pos + tokens.len(),
            block_table: block_table.to_vec(),
        });
        if !mix.is_empty() && end > start {
            match self.lora.last_mut() {
                Some(last) if last.rows.end == start && last.terms == mix => last.rows.end = end,
                _ => self.lora.push(LoraSegment {
                    rows: start..end,
                    terms: mix.to_vec(),
                }),
            }
        }
        if wants_logits && end > start {
            self.logit_rows.push(end - 1);
        }
    }
}
