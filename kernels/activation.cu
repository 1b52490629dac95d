// SwiGLU gate: out = silu(gate) * up, elementwise. CPU twin: src/ops/cpu/activation.rs
// (`silu_and_mul`). grid-stride over n elements; f32 math, one rounding to T at the store.
#include "common.cuh"

using namespace openlora;

template <typename T>
__device__ void silu_and_mul(T* __restrict__ out, const T* __restrict__ gate,
                             const T* __restrict__ up, long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    const float g = to_f32(gate[i]);
    out[i] = from_f32<T>(g / (1.f + __expf(-g)) * to_f32(up[i]));
  }
}

#define ACT_ENTRY(T, SUF)                                                                       \
  extern "C" __global__ void silu_and_mul_##SUF(T* out, const T* gate, const T* up,             \
                                                long long n) {                                  \
    silu_and_mul<T>(out, gate, up, n);                                                          \
  }

ACT_ENTRY(float, f32)
ACT_ENTRY(__half, f16)
ACT_ENTRY(__nv_bfloat16, bf16)
