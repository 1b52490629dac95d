//! The CPU KV storage: per layer, K and V as `[num_blocks, block_size, kv_heads, head_dim]` in the
//! chosen element type. f32 storage is read by the reference `paged_attention` (the exact path);
//! 16-bit storage by `paged_attention_grouped`. Slots are the block allocator's ids; this type
//! never decides which slot a token goes to.

use crate::exec::KvDtype;
use crate::ops::cpu::{
    paged_attention, paged_attention_grouped, write_kv, write_kv_as, AttnSeq, KvElem, KvLayerView,
    KvView,
};
use half::{bf16, f16};

/// Storage of one element type.
pub struct KvLayers<T> {
    k: Vec<Vec<T>>,
    v: Vec<Vec<T>>,
}

impl<T: KvElem> KvLayers<T> {
    fn new(layers: usize, n: usize) -> Self {
        KvLayers {
            k: (0..layers).map(|_| T::zeroed_vec(n)).collect(),
            v: (0..layers).map(|_| T::zeroed_vec(n)).collect(),
        }
    }
}

pub enum KvData {
    F32(KvLayers<f32>),
    F16(KvLayers<f16>),
    BF16(KvLayers<bf16>),
}

pub struct KvStore {
    data: KvData,
    pub block_size: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub num_blocks: usize,
}

impl KvStore {
    /// `dtype` must be resolved (not `Auto`).
    pub fn new(
        dtype: KvDtype,
        layers: usize,
        num_blocks: usize,
        block_size: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        let n = num_blocks * block_size * kv_heads * head_dim;
        let data = match dtype {
            KvDtype::F32 => KvData::F32(KvLayers::new(layers, n)),
            KvDtype::BF16 => KvData::BF16(KvLayers::new(layers, n)),
            KvDtype::F16 | KvDtype::Auto => KvData::F16(KvLayers::new(layers, n)),
        };
        KvStore {
            data,
            block_size,
            kv_heads,
            head_dim,
            num_blocks,
        }
    }

    pub fn dtype(&self) -> KvDtype {
        match self.data {
            KvData::F32(_) => KvDtype::F32,
            KvData::F16(_) => KvDtype::F16,
            KvData::BF16(_) => KvDtype::BF16,
        }
    }

    /// Writes the step's K/V rows of `layer` into `slots`.
    pub fn write(&mut self, layer: usize, k: &[f32], v: &[f32], slots: &[usize]) {
        let stride = self.kv_heads * self.head_dim;
        match &mut self.data {
            KvData::F32(d) => write_kv(k, v, slots, stride, &mut d.k[layer], &mut d.v[layer]),
            KvData::F16(d) => write_kv_as(k, v, slots, stride, &mut d.k[layer], &mut d.v[layer]),
            KvData::BF16(d) => write_kv_as(k, v, slots, stride, &mut d.k[layer], &mut d.v[layer]),
        }
    }

    /// Copies block `src`'s K/V (every layer) over block `dst`'s.
    pub fn copy_block(&mut self, src: usize, dst: usize) {
        let n = self.block_size * self.kv_heads * self.head_dim;
        fn copy<T: Copy>(d: &mut KvLayers<T>, src: usize, dst: usize, n: usize) {
            for layer in d.k.iter_mut().chain(d.v.iter_mut()) {
                layer.copy_within(src * n..(src + 1) * n, dst * n);
            }
        }
        match &mut self.data {
            KvData::F32(d) => copy(d, src, dst, n),
            KvData::F16(d) => copy(d, src, dst, n),
            KvData::BF16(d) => copy(d, src, dst, n),
        }
    }

    /// Attention of the step's queries over `layer`'s cache.
    pub fn attention(
        &self,
        layer: usize,
        q: &[f32],
        seqs: &[AttnSeq],
        heads: usize,
        out: &mut [f32],
    ) {
        let (bs, kvh, hd) = (self.block_size, self.kv_heads, self.head_dim);
        fn view<T>(d: &KvLayers<T>, l: usize, bs: usize, kvh: usize, hd: usize) -> KvView<'_, T> {
            KvView {
                k: &d.k[l],
                v: &d.v[l],
                block_size: bs,
                kv_heads: kvh,
                head_dim: hd,
            }
        }
        match &self.data {
            KvData::F32(d) => {
                let view = KvLayerView {
                    k: &d.k[layer],
                    v: &d.v[layer],
                    block_size: bs,
                    kv_heads: kvh,
                    head_dim: hd,
                };
                paged_attention(q, seqs, view, heads, out)
            }
            KvData::F16(d) => {
                paged_attention_grouped(q, seqs, view(d, layer, bs, kvh, hd), heads, out)
            }
            KvData::BF16(d) => {
                paged_attention_grouped(q, seqs, view(d, layer, bs, kvh, hd), heads, out)
            }
        }
    }
}
