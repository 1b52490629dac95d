// BGMV: batched gather matrix-vector LoRA for decode, one row per sequence. CPU twin:
// src/ops/cpu/sgmv.rs (`sgmv` with one-row segments holding one term each).
//
// The adapter weights sit in the device pool the LoRA pager manages; slot k of the pool is
// described by `slot_a[k]`, `slot_b[k]` (device addresses of A `[rank, in]` and B `[out, rank]`,
// element type T) and `slot_rank[k]`. A launch applies `n` entries (row, slot, coeff): rows without
// an adapter are simply absent. Rows of one launch are distinct (the launcher checks it); a row
// mixing several adapters takes one launch per term, in order, exactly like the CPU twin.
//
//   shrink: s[e, r]    = x[row_e] · A_slot(e)[r]              (s is f32 [n, s_stride])
//   expand: y[row_e, j] += coeff_e · (s[e, :rank] · B_slot(e)[j])
//
// `s_stride` is the batch's largest rank; only `rank(e)` entries of each scratch row are computed
// and read, so a rank-8 row costs rank-8 work next to a rank-64 row.
#include "common.cuh"

using namespace openlora;

// grid = (n), block = 256 (8 warps); warp w computes ranks w, w + 8, ...
template <typename T>
__device__ void bgmv_shrink(const T* __restrict__ x, int in_dim, const int* __restrict__ e_row,
                            const int* __restrict__ e_slot, const uint64_t* __restrict__ slot_a,
                            const int* __restrict__ slot_rank, float* __restrict__ s, int s_stride) {
  const int e = blockIdx.x, slot = e_slot[e];
  const int rank = slot_rank[slot];
  const T* a = reinterpret_cast<const T*>(slot_a[slot]);
  const T* xr = x + (long long)e_row[e] * in_dim;
  const int warps = blockDim.x / WARP;
  for (int r = threadIdx.x / WARP; r < rank; r += warps) {
    const float v = warp_dot(xr, a + (long long)r * in_dim, in_dim);
    if (threadIdx.x % WARP == 0) s[(long long)e * s_stride + r] = v;
  }
}

// grid = (n, ceil(out_dim / blockDim.x)); the entry's shrunk row is staged in shared memory
// (`s_stride` floats of dynamic shared memory).
template <typename T>
__device__ void bgmv_expand(T* __restrict__ y, int out_dim, const int* __restrict__ e_row,
                            const int* __restrict__ e_slot, const float* __restrict__ e_coeff,
                            const uint64_t* __restrict__ slot_b, const int* __restrict__ slot_rank,
                            const float* __restrict__ s, int s_stride) {
  extern __shared__ float sh[];
  const int e = blockIdx.x, slot = e_slot[e];
  const int rank = slot_rank[slot];
  for (int r = threadIdx.x; r < rank; r += blockDim.x) sh[r] = s[(long long)e * s_stride + r];
  __syncthreads();
  const int j = blockIdx.y * blockDim.x + threadIdx.x;
  if (j >= out_dim) return;
  const T* b = reinterpret_cast<const T*>(slot_b[slot]) + (long long)j * rank;
  float d = 0.f;
  for (int r = 0; r < rank; ++r) d = fmaf(sh[r], to_f32(b[r]), d);
  T* yp = y + (long long)e_row[e] * out_dim + j;
  *yp = from_f32<T>(fmaf(e_coeff[e], d, to_f32(*yp)));
}

#define BGMV_ENTRY(T, SUF)                                                                      \
  extern "C" __global__ void __launch_bounds__(256) bgmv_shrink_##SUF(                          \
      const T* x, int in_dim, const int* e_row, const int* e_slot, const uint64_t* slot_a,      \
      const int* slot_rank, float* s, int s_stride) {                                           \
    bgmv_shrink<T>(x, in_dim, e_row, e_slot, slot_a, slot_rank, s, s_stride);                   \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(256) bgmv_expand_##SUF(                          \
      T* y, int out_dim, const int* e_row, const int* e_slot, const float* e_coeff,             \
      const uint64_t* slot_b, const int* slot_rank, const float* s, int s_stride) {             \
    bgmv_expand<T>(y, out_dim, e_row, e_slot, e_coeff, slot_b, slot_rank, s, s_stride);         \
  }

BGMV_ENTRY(float, f32)
BGMV_ENTRY(__half, f16)
BGMV_ENTRY(__nv_bfloat16, bf16)
