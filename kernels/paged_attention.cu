// Paged attention over block tables, decode and prefill alike. CPU twin:
// src/ops/cpu/attention.rs (`paged_attention`; the KV write below is the twin of `write_kv`).
//
// One layer's cache is one buffer `[2, num_blocks * block_size, kv_heads, head_dim]`: K, then V at
// element offset `v_off` (the device executor's `DeviceKv` tensor, passed as is). The
// token at position p of a sequence lives in block `block_table[p / block_size]`, offset
// `p % block_size`. Each query row attends causally to positions 0..=row_pos[row] of its sequence
// (grouped-query: head h reads kv head h / (heads / kv_heads)).
//
// Prefill path: the same kernel is the varlen causal kernel. The step first writes the new rows'
// K/V into the cache (`reshape_and_cache`), then every row (of any sequence, any length) is one
// (row, head) grid entry that reads its own causal prefix from the cache. This is correct for any
// mix of prefill and decode rows in one launch; a tiled flash-style prefill kernel is a later
// optimisation (prefill attention is compute-bound, decode is what this kernel is shaped for).
//
// Algorithm: grid = (rows, heads) (rows on x: no 65535 limit), block = 4 warps. Warp w takes positions w, w + 4, ...; each
// lane holds head_dim / 32 query dims in registers; a position costs one warp-reduced dot and an
// online-softmax update (running max m, running sum l, weighted V accumulator). The warps' partial
// (m, l, acc) are merged in shared memory at the end. head_dim must be a multiple of 32, <= 256.
#include "common.cuh"

using namespace openlora;

constexpr int PA_WARPS = 4;
constexpr int PA_MAX_DIMS_PER_LANE = 8;  // head_dim <= 256

// The index arrays are views of the step's one u32 upload (src/ops/device/paged_attention.rs
// encodes them): `tables` is `[seqs, max_blocks]` (padded), `row_seq`/`row_pos` one entry per row.
template <typename T>
__device__ void paged_attention(T* __restrict__ out, const T* __restrict__ q,
                                const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                                const unsigned* __restrict__ block_tables, int max_blocks,
                                const unsigned* __restrict__ row_seq, const unsigned* __restrict__ row_pos,
                                int heads, int kv_heads, int head_dim, int block_size, float scale) {
  __shared__ float sm_m[PA_WARPS], sm_l[PA_WARPS];
  __shared__ float sm_acc[PA_WARPS][PA_MAX_DIMS_PER_LANE * WARP];
  const int row = blockIdx.x, h = blockIdx.y;
  const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
  const int dpl = head_dim / WARP;  // dims per lane
  const int kvh = h / (heads / kv_heads);
  const unsigned* table = block_tables + (long long)row_seq[row] * max_blocks;
  const int pos = (int)row_pos[row];
  const long long tok_stride = (long long)kv_heads * head_dim;

  float qr[PA_MAX_DIMS_PER_LANE], acc[PA_MAX_DIMS_PER_LANE];
  const T* qh = q + ((long long)row * heads + h) * head_dim;
#pragma unroll
  for (int i = 0; i < PA_MAX_DIMS_PER_LANE; ++i) {
    qr[i] = i < dpl ? to_f32(qh[i * WARP + lane]) : 0.f;
    acc[i] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int p = warp; p <= pos; p += PA_WARPS) {
    const long long slot = (long long)table[p / block_size] * block_size + p % block_size;
    const long long base = slot * tok_stride + (long long)kvh * head_dim;
    float d = 0.f;
#pragma unroll
    for (int i = 0; i < PA_MAX_DIMS_PER_LANE; ++i)
      if (i < dpl) d = fmaf(qr[i], to_f32(k_cache[base + i * WARP + lane]), d);
    const float score = warp_sum(d) * scale;
    const float m_new = fmaxf(m, score);
    const float corr = __expf(m - m_new), w = __expf(score - m_new);
    l = l * corr + w;
#pragma unroll
    for (int i = 0; i < PA_MAX_DIMS_PER_LANE; ++i)
      if (i < dpl) acc[i] = fmaf(w, to_f32(v_cache[base + i * WARP + lane]), acc[i] * corr);
    m = m_new;
  }
  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < PA_MAX_DIMS_PER_LANE; ++i)
    if (i < dpl) sm_acc[warp][i * WARP + lane] = acc[i];
  __syncthreads();
  // Merge: position 0 is always attended (warp 0 has it), so the global max is finite and warps
  // that saw no position (m = -inf) get weight exp(-inf) = 0.
  float gm = -INFINITY;
  for (int w = 0; w < PA_WARPS; ++w) gm = fmaxf(gm, sm_m[w]);
  float gl = 0.f, wts[PA_WARPS];
  for (int w = 0; w < PA_WARPS; ++w) {
    wts[w] = __expf(sm_m[w] - gm);
    gl += sm_l[w] * wts[w];
  }
  const float inv = 1.f / gl;
  T* oh = out + ((long long)row * heads + h) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float o = 0.f;
    for (int w = 0; w < PA_WARPS; ++w) o = fmaf(sm_acc[w][d], wts[w], o);
    oh[d] = from_f32<T>(o * inv);
  }
}

// KV-cache write (vLLM's reshape_and_cache): row i's K/V (`[rows, kv_heads * head_dim]`) go to
// cache slot `slots[i]` = block * block_size + offset. grid = (rows), threads stride the row. A
// slot at or beyond `capacity` is skipped (the host cannot check device-resident slots cheaply;
// the CPU twin refuses them, and the executor's slots come from the block manager).
template <typename T>
__device__ void reshape_and_cache(const T* __restrict__ k, const T* __restrict__ v,
                                  const unsigned* __restrict__ slots, int stride,
                                  T* __restrict__ k_cache, T* __restrict__ v_cache,
                                  long long capacity) {
  const int row = blockIdx.x;
  if ((long long)slots[row] >= capacity) return;
  const long long dst = (long long)slots[row] * stride, src = (long long)row * stride;
  for (int i = threadIdx.x; i < stride; i += blockDim.x) {
    k_cache[dst + i] = k[src + i];
    v_cache[dst + i] = v[src + i];
  }
}

#define PA_ENTRY(T, SUF)                                                                         \
  extern "C" __global__ void __launch_bounds__(PA_WARPS * WARP) paged_attention_##SUF(           \
      T* out, const T* q, const T* cache, long long v_off, const unsigned* block_tables,         \
      int max_blocks, const unsigned* row_seq, const unsigned* row_pos, int heads, int kv_heads, \
      int head_dim, int block_size, float scale) {                                               \
    paged_attention<T>(out, q, cache, cache + v_off, block_tables, max_blocks, row_seq, row_pos, \
                       heads, kv_heads, head_dim, block_size, scale);                            \
  }                                                                                              \
  extern "C" __global__ void reshape_and_cache_##SUF(const T* k, const T* v,                     \
                                                     const unsigned* slots, int stride,          \
                                                     T* cache, long long v_off,                  \
                                                     long long capacity) {                       \
    reshape_and_cache<T>(k, v, slots, stride, cache, cache + v_off, capacity);                   \
  }

PA_ENTRY(float, f32)
PA_ENTRY(__half, f16)
PA_ENTRY(__nv_bfloat16, bf16)
