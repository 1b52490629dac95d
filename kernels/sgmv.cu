// SGMV: segmented gather matrix-vector LoRA for prefill. CPU twin: src/ops/cpu/sgmv.rs (`sgmv`).
//
// The batch's rows are grouped in segments (contiguous row ranges that share one adapter
// combination). Each segment has one or more *terms* (adapter, scale·weight); a term's A is
// `[rank, in]` and its B `[out, rank]`, both T, living wherever the LoRA pager put them: the kernels
// receive a *pointer table* (one entry per term), never one launch per adapter. Ranks differ freely
// between terms in one launch and nothing is padded to the largest rank: term t's shrunk rows take
// exactly `rows(seg) * rank(t)` floats of the scratch buffer `s`, starting at `term_s_off[t]`.
//
//   shrink: s[t][i, r]  = x[row_i] · A_t[r]                  (f32 accumulation, f32 scratch)
//   expand: y[row_i, j] += Σ_t coeff_t · (s[t][i, :] · B_t[j])  (terms in order, f32, one store)
//
// Launch layout (the launcher in src/ops/cuda/sgmv.rs builds and checks all tables):
//   seg_rows   i32[2 * segs]   row range [start, end) of each segment
//   seg_terms  i32[segs + 1]   term range of each segment
//   term_seg   i32[terms]      owning segment of each term
//   term_a/b   u64[terms]      device addresses of A_t / B_t (element type T)
//   term_rank  i32[terms], term_coeff f32[terms], term_s_off i64[terms]
#include "common.cuh"

using namespace openlora;

// grid = (terms, chunks), block = 256 threads (8 warps). Each warp computes one (row, r) dot of
// length `in_dim` at a time; the (row, r) pairs of a term are strided over the chunk's warps.
template <typename T>
__device__ void sgmv_shrink(const T* __restrict__ x, int in_dim, const int* __restrict__ seg_rows,
                            const int* __restrict__ term_seg, const uint64_t* __restrict__ term_a,
                            const int* __restrict__ term_rank, const long long* __restrict__ term_s_off,
                            float* __restrict__ s) {
  const int t = blockIdx.x;
  const int seg = term_seg[t];
  const int row0 = seg_rows[2 * seg], n = seg_rows[2 * seg + 1] - row0;
  const int rank = term_rank[t];
  const T* a = reinterpret_cast<const T*>(term_a[t]);
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
__device__ void sgmv_expand(T* __restrict__ y, int out_dim, const int* __restrict__ seg_rows,
                            const int* __restrict__ seg_terms, const uint64_t* __restrict__ term_b,
                            const int* __restrict__ term_rank, const float* __restrict__ term_coeff,
                            const long long* __restrict__ term_s_off, const float* __restrict__ s) {
  const int seg = blockIdx.x;
  const int j = blockIdx.y * blockDim.x + threadIdx.x;
  if (j >= out_dim) return;
  const int row0 = seg_rows[2 * seg], n = seg_rows[2 * seg + 1] - row0;
  const int t0 = seg_terms[seg], t1 = seg_terms[seg + 1];
  for (int i = blockIdx.z; i < n; i += gridDim.z) {
    T* yp = y + (long long)(row0 + i) * out_dim + j;
    float acc = to_f32(*yp);
    for (int t = t0; t < t1; ++t) {
      const int rank = term_rank[t];
      const T* b = reinterpret_cast<const T*>(term_b[t]) + (long long)j * rank;
      const float* si = s + term_s_off[t] + (long long)i * rank;
      float d = 0.f;
      for (int r = 0; r < rank; ++r) d = fmaf(si[r], to_f32(b[r]), d);
      acc = fmaf(term_coeff[t], d, acc);
    }
    *yp = from_f32<T>(acc);
  }
}

#define SGMV_ENTRY(T, SUF)                                                                        \
  extern "C" __global__ void __launch_bounds__(256) sgmv_shrink_##SUF(                            \
      const T* x, int in_dim, const int* seg_rows, const int* term_seg, const uint64_t* term_a,   \
      const int* term_rank, const long long* term_s_off, float* s) {                              \
    sgmv_shrink<T>(x, in_dim, seg_rows, term_seg, term_a, term_rank, term_s_off, s);              \
  }                                                                                               \
  extern "C" __global__ void __launch_bounds__(256) sgmv_expand_##SUF(                            \
      T* y, int out_dim, const int* seg_rows, const int* seg_terms, const uint64_t* term_b,       \
      const int* term_rank, const float* term_coeff, const long long* term_s_off, const float* s) { \
    sgmv_expand<T>(y, out_dim, seg_rows, seg_terms, term_b, term_rank, term_coeff, term_s_off, s); \
  }

SGMV_ENTRY(float, f32)
SGMV_ENTRY(__half, f16)
SGMV_ENTRY(__nv_bfloat16, bf16)
