//! Rotary position embedding in the HF ("rotate_half", NeoX) layout: dimension `i` pairs with
//! `i + head_dim/2`. GGUF llama weights are un-permuted at load so this one layout serves both.

/// Precomputed cos/sin for positions `0..max_positions`.
pub struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// `inv_freq` has `head_dim / 2` entries (already scaled for llama3/linear rope scaling).
    pub fn new(inv_freq: &[f32], max_positions: usize) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for &f in inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        RopeTable { half, cos, sin }
    }

    /// `(head_dim / 2, cos, sin)`, the tables as `[max_positions, head_dim / 2]` (the CUDA path
    /// uploads these, so both paths rotate by identical angles).
    pub fn tables(&self) -> (usize, &[f32], &[f32]) {
        (self.half, &self.cos, &self.sin)
    }

    pub fn max_positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Rotates every head of every row in place. `x` is `[rows, heads * head_dim]`.
    pub fn apply(&self, x: &mut [f32], positions: &[usize], heads: usize) {
        let hd = self.half * 2;
        for (row, &p) in x.chunks_mut(heads * hd).zip(positions) {
            let cos = &self.cos[p * self.half..(p + 1) * self.half];
            let sin = &self.sin[p * self.half..(p + 1) * self.half];
            for head in row.chunks_mut(hd) {
                let (a, b) = head.split_at_mut(self.half);
                for i in 0..self.half {
                    let (x0, x1) = (a[i], b[i]);
                    a[i] = x0 * cos[i] - x1 * sin[i];
                    b[i] = x1 * cos[i] + x0 * sin[i];
                }
            }
        }
    }
}
