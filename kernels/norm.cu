// RMSNorm, optionally fused with the residual add. CPU twin: src/ops/cpu/norm.rs (`rms_norm`);
// the fused form is the twin of `h += delta` (llama.rs `add_assign`) followed by `rms_norm(h)`.
//
//   rms_norm:           y[row] = w * (x[row] / sqrt(mean(x[row]^2) + eps))
//   fused_add_rms_norm: residual[row] += x[row] (stored in T), then y[row] = rms_norm(residual[row])
//
// grid = (rows), block = 256..1024 threads; the sum of squares is accumulated in f32 and reduced
// over the block. The fused form normalizes the *stored* (rounded) residual so the next layer's
// residual stream and the normed input agree bit for bit.
#include "common.cuh"

using namespace openlora;

template <typename T>
__device__ void rms_norm(T* __restrict__ y, const T* __restrict__ x, const T* __restrict__ w, int d,
                         float eps) {
  __shared__ float scratch[WARP];
  const T* xr = x + (long long)blockIdx.x * d;
  T* yr = y + (long long)blockIdx.x * d;
  float ss = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = to_f32(xr[i]);
    ss = fmaf(v, v, ss);
  }
  const float inv = rsqrtf(block_sum(ss, scratch) / d + eps);
  for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = from_f32<T>(to_f32(w[i]) * (to_f32(xr[i]) * inv));
}

template <typename T>
__device__ void fused_add_rms_norm(T* __restrict__ y, T* __restrict__ residual,
                                   const T* __restrict__ x, const T* __restrict__ w, int d,
                                   float eps) {
  __shared__ float scratch[WARP];
  const long long off = (long long)blockIdx.x * d;
  float ss = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const T h = from_f32<T>(to_f32(residual[off + i]) + to_f32(x[off + i]));
    residual[off + i] = h;  // each thread re-reads only the elements it wrote
    const float v = to_f32(h);
    ss = fmaf(v, v, ss);
  }
  const float inv = rsqrtf(block_sum(ss, scratch) / d + eps);
  for (int i = threadIdx.x; i < d; i += blockDim.x)
    y[off + i] = from_f32<T>(to_f32(w[i]) * (to_f32(residual[off + i]) * inv));
}

#define NORM_ENTRY(T, SUF)                                                                       \
  extern "C" __global__ void rms_norm_##SUF(T* y, const T* x, const T* w, int d, float eps) {    \
    rms_norm<T>(y, x, w, d, eps);                                                                \
  }                                                                                              \
  extern "C" __global__ void fused_add_rms_norm_##SUF(T* y, T* residual, const T* x, const T* w, \
                                                      int d, float eps) {                        \
    fused_add_rms_norm<T>(y, residual, x, w, d, eps);                                            \
  }

NORM_ENTRY(float, f32)
NORM_ENTRY(__half, f16)
NORM_ENTRY(__nv_bfloat16, bf16)
