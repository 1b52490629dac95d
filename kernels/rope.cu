// Rotary position embedding, HF "rotate_half" (NeoX) layout: dim i pairs with i + head_dim/2.
// CPU twin: src/ops/cpu/rope.rs (`RopeTable::apply`).
//
// `x` is `[rows, heads * head_dim]`, rotated in place; `cos`/`sin` are the f32 tables of the CPU
// twin (`[max_positions, head_dim / 2]`, already scaled for llama3/linear rope scaling) uploaded
// once; `positions[row]` picks the table row. grid = (rows), threads stride heads * half pairs.
#include "common.cuh"

using namespace openlora;

template <typename T>
__device__ void rope(T* __restrict__ x, const int* __restrict__ positions,
                     const float* __restrict__ cos_t, const float* __restrict__ sin_t, int heads,
                     int half) {
  const int row = blockIdx.x;
  const long long p = positions[row];
  T* xr = x + (long long)row * heads * 2 * half;
  for (int k = threadIdx.x; k < heads * half; k += blockDim.x) {
    const int h = k / half, i = k % half;
    T* head = xr + (long long)h * 2 * half;
    const float c = cos_t[p * half + i], s = sin_t[p * half + i];
    const float x0 = to_f32(head[i]), x1 = to_f32(head[i + half]);
    head[i] = from_f32<T>(x0 * c - x1 * s);
    head[i + half] = from_f32<T>(x1 * c + x0 * s);
  }
}

#define ROPE_ENTRY(T, SUF)                                                                      \
  extern "C" __global__ void rope_##SUF(T* x, const int* positions, const float* cos_t,         \
                                        const float* sin_t, int heads, int half) {              \
    rope<T>(x, positions, cos_t, sin_t, heads, half);                                           \
  }

ROPE_ENTRY(float, f32)
ROPE_ENTRY(__half, f16)
ROPE_ENTRY(__nv_bfloat16, bf16)
