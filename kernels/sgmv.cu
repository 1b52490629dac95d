// SGMV over the adapter slot pool: segmented gather matrix-vector LoRA for prefill segments and
// decode rows alike (a one-row segment is BGMV: one block per (row, term) in shrink, one tile
// per row in expand). CPU twin: src/ops/cpu/sgmv.rs (`sgmv`), called by the same custom op's
// cpu_fwd (src/ops/device/sgmv.rs, which encodes the index and checks it).
//
// The batch's rows are grouped in segments (contiguous row ranges sharing one adapter mix); each
// segment has terms (slot, weight). One (layer, projection) of the pool is two contiguous buffers:
// slot k's A packed `[rank_k, in]` at `pool_a + k * max_rank * in`, its B packed `[out, rank_k]`
// at `pool_b + k * out * max_rank`; `meta[k]` is rank_k (0: the adapter does not target this
// projection) and `meta[slots + k]` the bits of its f32 scale. Ranks differ freely in one launch
// and no work is padded to the largest rank.
//
//   shrink: s[t][i, r]  = x[row_i] · A_slot(t)[r]                 (f32 accumulation, f32 scratch)
//   expand: y[row_i, j] += Σ_t scale·w_t · (s[t][i, :] · B_slot(t)[j])  (terms in order, one store)
//
// Index (views of the step's one u32 upload): seg_rows [2 * segs] (start, end), seg_terms
// [segs + 1], term_seg / term_slot / term_w (f32 bits) / term_s_off [terms]; term t's scratch
// holds rows(seg) * max_rank floats from term_s_off[t].
#include "common.cuh"

using namespace openlora;

// grid = (terms, chunks), block = 256 threads (8 warps). Each warp computes one (row, r) dot of
// length `in_dim` at a time; the (row, r) pairs of a term are strided over the chunk's warps.
template <typename T>
__device__ void sgmv_shrink(const T* __restrict__ x, int in_dim,
                            const unsigned* __restrict__ seg_rows,
                            const unsigned* __restrict__ term_seg,
                            const unsigned* __restrict__ term_slot,
                            const unsigned* __restrict__ term_s_off, const T* __restrict__ pool_a,
                            const unsigned* __restrict__ meta, int max_rank, float* __restrict__ s) {
  const int t = blockIdx.x;
  const int seg = term_seg[t], slot = term_slot[t];
  const int row0 = seg_rows[2 * seg], n = seg_rows[2 * seg + 1] - row0;
  const int rank = meta[slot];
  const T* a = pool_a + (long long)slot * max_rank * in_dim;
  float* st = s + term_s_off[t];
  const int warps = blockDim.x / WARP;
  const int stride = gridDim.y * warps;
  for (int w = blockIdx.y * warps + threadIdx.x / WARP; w < n * rank; w += stride) {
    const int i = w / rank, r = w % rank;
    const float v = warp_dot(x + (long long)(row0 + i) * in_dim, a + (long long)r * in_dim, in_dim);
    if (threadIdx.x % WARP == 0) st[w] = v;  // st[i * rank + r]
  }
}

// grid = (segs, ceil(out_dim / blockDim.x), row_chunks). Thread j of the tile owns output column j
// for the rows `blockIdx.z, blockIdx.z + gridDim.z, ...` of its segment, and applies every term of
// the segment in order before storing once: no two threads ever write the same element.
template <typename T>
__device__ void sgmv_expand(T* __restrict__ y, int out_dim, const unsigned* __restrict__ seg_rows,
                            const unsigned* __restrict__ seg_terms,
                            const unsigned* __restrict__ term_slot,
                            const unsigned* __restrict__ term_w,
                            const unsigned* __restrict__ term_s_off, const T* __restrict__ pool_b,
                            const unsigned* __restrict__ meta, int slots, int max_rank,
                            const float* __restrict__ s) {
  const int seg = blockIdx.x;
  const int j = blockIdx.y * blockDim.x + threadIdx.x;
  if (j >= out_dim) return;
  const int row0 = seg_rows[2 * seg], n = seg_rows[2 * seg + 1] - row0;
  const int t0 = seg_terms[seg], t1 = seg_terms[seg + 1];
  for (int i = blockIdx.z; i < n; i += gridDim.z) {
    T* yp = y + (long long)(row0 + i) * out_dim + j;
    float acc = to_f32(*yp);
    for (int t = t0; t < t1; ++t) {
      const int slot = term_slot[t];
      const int rank = meta[slot];
      if (rank == 0) continue;
      const T* b = pool_b + (long long)slot * out_dim * max_rank + (long long)j * rank;
      const float* si = s + term_s_off[t] + (long long)i * rank;
      float d = 0.f;
      for (int r = 0; r < rank; ++r) d = fmaf(si[r], to_f32(b[r]), d);
      const float coeff = __uint_as_float(meta[slots + slot]) * __uint_as_float(term_w[t]);
      acc = fmaf(coeff, d, acc);
    }
    *yp = from_f32<T>(acc);
  }
}

#define SGMV_ENTRY(T, SUF)                                                                        \
  extern "C" __global__ void __launch_bounds__(256) sgmv_shrink_##SUF(                            \
      const T* x, int in_dim, const unsigned* seg_rows, const unsigned* term_seg,                 \
      const unsigned* term_slot, const unsigned* term_s_off, const T* pool_a,                     \
      const unsigned* meta, int max_rank, float* s) {                                             \
    sgmv_shrink<T>(x, in_dim, seg_rows, term_seg, term_slot, term_s_off, pool_a, meta, max_rank, \
                   s);                                                                            \
  }                                                                                               \
  extern "C" __global__ void __launch_bounds__(256) sgmv_expand_##SUF(                            \
      T* y, int out_dim, const unsigned* seg_rows, const unsigned* seg_terms,                     \
      const unsigned* term_slot, const unsigned* term_w, const unsigned* term_s_off,              \
      const T* pool_b, const unsigned* meta, int slots, int max_rank, const float* s) {           \
    sgmv_expand<T>(y, out_dim, seg_rows, seg_terms, term_slot, term_w, term_s_off, pool_b, meta,  \
                   slots, max_rank, s);                                                           \
  }

SGMV_ENTRY(float, f32)
SGMV_ENTRY(__half, f16)
SGMV_ENTRY(__nv_bfloat16, bf16)
