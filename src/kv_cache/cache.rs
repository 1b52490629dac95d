//! KV storage: per layer, K and V as `[num_blocks, block_size, kv_heads, head_dim]` f32.

use crate::ops::cpu::KvLayerView;

pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    pub block_size: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub num_blocks: usize,
}

impl KvCache {
    pub fn new(
        layers: usize,
        num_blocks: usize,
        block_size: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        let n = num_blocks * block_size * kv_heads * head_dim;
        KvCache {
            k: (0..layers).map(|_| vec![0f32; n]).collect(),
            v: (0..layers).map(|_| vec![0f32; n]).collect(),
            block_size,
            kv_heads,
            head_dim,
            num_blocks,
        }
    }

    /// Bytes per cached token across all layers (K and V).
    pub fn bytes_per_token(layers: usize, kv_heads: usize, head_dim: usize) -> usize {
        layers * 2 * kv_heads * head_dim * 4
    }

    pub fn view(&self, layer: usize) -> KvLayerView<'_> {
        KvLayerView {
            k: &self.k[layer],
            v: &self.v[layer],
            block_size: self.block_size,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        }
    }

    pub fn layer_mut(&mut self, layer: usize) -> (&mut [f32], &mut [f32]) {
        (&mut self.k[layer], &mut self.v[layer])
    }
}
