//! The LoRA layout of one forward batch: contiguous row ranges, each with the adapter
//! combination of the sequence(s) owning those rows. Neighbouring ranges with the same
//! combination are merged, so a batch sorted by adapter gives one segment per adapter.

use super::{LoraAdapter, Proj};
use crate::ops::cpu::{LoraSegment, LoraTerm};
use std::ops::Range;
use std::sync::Arc;

pub type AdapterMix = Vec<(Arc<LoraAdapter>, f32)>;

#[derive(Default)]
pub struct LoraBatch {
    segs: Vec<(Range<usize>, AdapterMix)>,
}

fn same_mix(a: &AdapterMix, b: &AdapterMix) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((x, wx), (y, wy))| Arc::ptr_eq(x, y) && wx == wy)
}

impl LoraBatch {
    /// Records that `rows` use `mix` (empty = base model only).
    pub fn push(&mut self, rows: Range<usize>, mix: &AdapterMix) {
        if mix.is_empty() || rows.is_empty() {
            return;
        }
        if let Some((last, last_mix)) = self.segs.last_mut() {
            if last.end == rows.start && same_mix(last_mix, mix) {
                last.end = rows.end;
                return;
            }
        }
        self.segs.push((rows, mix.clone()));
    }

    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// Number of segments (distinct contiguous adapter runs).
    pub fn num_segments(&self) -> usize {
        self.segs.len()
    }

    /// The SGMV segments for one projection of one layer (terms whose adapter targets it).
    pub fn segments(&self, layer: usize, proj: Proj) -> Vec<LoraSegment<'_>> {
        self.segs
            .iter()
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
}
