// Dense projection y = x · Wᵀ (+ bias), shaped for decode (few rows, weight-bandwidth bound).
// CPU twin: src/ops/cpu/linear.rs (`linear`). W is `[n, k]` (HF/PyTorch [out, in]), x `[m, k]`,
// y `[m, n]`.
//
// grid = (ceil(n / 8), ceil(m / LIN_ROWS)), block = 8 warps. Warp w of block (bx, by) owns output
// feature j = bx·8 + w for the LIN_ROWS rows starting at by·LIN_ROWS: it streams W's row j once
// (16-byte vector loads when k allows) and reuses every loaded chunk for all its rows, so W is read
// ceil(m / LIN_ROWS) times per call — once at decode batch <= 8, which is the HBM roofline's
// "weight bytes" term. f32 accumulation per (row, j), one warp reduction, one store. This is the
// kernel the batch-1 roofline target is measured on; large prefill GEMMs belong to cuBLAS later.
#include "common.cuh"

using namespace openlora;

constexpr int LIN_ROWS = 8;

template <typename T>
__device__ void linear(T* __restrict__ y, const T* __restrict__ x, const T* __restrict__ w,
                       const T* __restrict__ bias, int has_bias, int m, int n, int k) {
  constexpr int VEC = 16 / sizeof(T);  // elements per 16-byte load
  const int lane = threadIdx.x % WARP;
  const int j = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
  const int r0 = blockIdx.y * LIN_ROWS;
  if (j >= n) return;  // uniform per warp; no block-level sync below
  const int rows = min(LIN_ROWS, m - r0);
  float acc[LIN_ROWS];
#pragma unroll
  for (int r = 0; r < LIN_ROWS; ++r) acc[r] = 0.f;
  const T* wj = w + (long long)j * k;
  const T* x0 = x + (long long)r0 * k;
  if (k % VEC == 0) {
    // Buffers start 256-byte aligned and rows are k·sizeof(T) bytes, a multiple of 16 here.
    for (int i = lane * VEC; i < k; i += WARP * VEC) {
      const uint4 wv = *reinterpret_cast<const uint4*>(wj + i);
      const T* wt = reinterpret_cast<const T*>(&wv);
#pragma unroll
      for (int r = 0; r < LIN_ROWS; ++r) {
        if (r < rows) {
          const uint4 xv = *reinterpret_cast<const uint4*>(x0 + (long long)r * k + i);
          const T* xt = reinterpret_cast<const T*>(&xv);
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[r] = fmaf(to_f32(xt[e]), to_f32(wt[e]), acc[r]);
        }
      }
    }
  } else {
    for (int i = lane; i < k; i += WARP) {
      const float wv = to_f32(wj[i]);
#pragma unroll
      for (int r = 0; r < LIN_ROWS; ++r)
        if (r < rows) acc[r] = fmaf(to_f32(x0[(long long)r * k + i]), wv, acc[r]);
    }
  }
  const float b = has_bias ? to_f32(bias[j]) : 0.f;
#pragma unroll
  for (int r = 0; r < LIN_ROWS; ++r) {
    const float s = warp_sum(acc[r]);  // every lane takes part, whatever `rows` is
    if (lane == 0 && r < rows) y[(long long)(r0 + r) * n + j] = from_f32<T>(s + b);
  }
}

#define LIN_ENTRY(T, SUF)                                                                       \
  extern "C" __global__ void __launch_bounds__(256) linear_##SUF(                               \
      T* y, const T* x, const T* w, const T* bias, int has_bias, int m, int n, int k) {         \
    linear<T>(y, x, w, bias, has_bias, m, n, k);                                                \
  }

LIN_ENTRY(float, f32)
LIN_ENTRY(__half, f16)
LIN_ENTRY(__nv_bfloat16, bf16)
