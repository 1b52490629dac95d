//! Examples padded into one `[b, t]` batch (right padding). What always holds: a real token's
//! attention sees only real tokens at or before it (causal mask plus key-padding mask), positions
//! restart at 0 in every row, and only target tokens (assistant tokens of a real row) are in the
//! loss, so a row's loss does not depend on the other rows or on the padding.

use super::tensor_io::cerr;
use crate::error::Result;
use candle_core::{Device, Tensor};

/// One tokenized conversation: `loss[i]` says whether `ids[i]` is a target (predicted from the
/// tokens before it).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainExample {
    pub ids: Vec<u32>,
    pub loss: Vec<bool>,
}

impl TrainExample {
    pub fn targets(&self) -> usize {
        self.loss.iter().skip(1).filter(|&&l| l).count()
    }
}

pub struct Batch {
    pub b: usize,
    pub t: usize,
    /// `b * t` ids, row-major; padding is `pad_id`.
    pub ids: Vec<u32>,
    /// Real tokens per row.
    pub lens: Vec<usize>,
    /// Rows (`row * t + position`) whose next token is a target, and those targets.
    pub target_rows: Vec<u32>,
    pub target_ids: Vec<u32>,
}

impl Batch {
    pub fn new(examples: &[&TrainExample], pad_id: u32) -> Self {
        let b = examples.len();
        let t = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let mut ids = vec![pad_id; b * t];
        let (mut target_rows, mut target_ids) = (Vec::new(), Vec::new());
        for (r, e) in examples.iter().enumerate() {
            ids[r * t..r * t + e.ids.len()].copy_from_slice(&e.ids);
            for i in 1..e.ids.len() {
                if e.loss[i] {
                    target_rows.push((r * t + i - 1) as u32);
                    target_ids.push(e.ids[i]);
                }
            }
        }
        Batch {
            b,
            t,
            ids,
            lens: examples.iter().map(|e| e.ids.len()).collect(),
            target_rows,
            target_ids,
        }
    }

    /// Real (non-padding) tokens.
    pub fn tokens(&self) -> usize {
        self.lens.iter().sum()
    }

    pub fn targets(&self) -> usize {
        self.target_ids.len()
    }

    /// The additive attention mask `[b, 1, t, t]`: 0 where query `i` may see key `j`
    /// (`j <= i` and `j` real), a large negative number elsewhere; on `dev`.
    pub fn mask(&self, dev: &Device) -> Result<Tensor> {
        let t = self.t;
        let mut m = vec![-1e9f32; self.b * t * t];
        for (r, &len) in self.lens.iter().enumerate() {
            for i in 0..t {
                let row = &mut m[(r * t + i) * t..(r * t + i + 1) * t];
                row[..(i + 1).min(len)].fill(0.0);
            }
        }
        Tensor::from_vec(m, (self.b, 1, t, t), dev).map_err(cerr)
    }
}
