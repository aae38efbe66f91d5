// Helpers shared by the CUDA kernels. Only the CUDA runtime and kprune/hd_math.h: the device code
// compiles (and is compile-checked in CI) without torch's CUDA headers.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kprune/hd_math.h"
#include "kprune/hd_reduce.h"

namespace kprune {
namespace cuda {

using Bf16 = uint16_t;  // bfloat16 as raw bits (layout of c10::BFloat16)

// Storage <-> accumulation conversions on the device.
template <typename T>
struct Cvt {
  using acc = T;
  static __device__ __forceinline__ acc load(T v) { return v; }
  static __device__ __forceinline__ T store(acc v) { return v; }
};
template <>
struct Cvt<Bf16> {
  using acc = float;
  static __device__ __forceinline__ float load(Bf16 v) { return math::bf16_to_float(v); }
  static __device__ __forceinline__ Bf16 store(float v) { return math::float_to_bf16(v); }
};
template <>
struct Cvt<__half> {
  using acc = float;
  static __device__ __forceinline__ float load(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half store(float v) { return __float2half_rn(v); }
};

inline unsigned int blocks_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned int>(b < 65535 * 32 ? (b > 0 ? b : 1) : 65535 * 32);
}

// Rows of per-thread partial sums the masked backward kernels write: kRows per chunk of kRowChunk rows.
inline int64_t partial_rows(int64_t rows, int64_t row_chunk, int rows_per_block) {
  return (rows + row_chunk - 1) / row_chunk * rows_per_block;
}

// out[j] = sum of partial [rows, ld] over all rows and the columns [j * per, (j + 1) * per), in a fixed
// order (math::block_sum): the deterministic replacement of per-thread float atomics.
template <typename A>
__global__ void column_group_sum_kernel(const A* __restrict__ partial, int64_t rows, int64_t ld, int64_t per,
                                        int64_t groups, A* __restrict__ out) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < groups) out[j] = math::block_sum(partial, rows, ld, j * per, (j + 1) * per);
}

template <typename A>
void launch_column_group_sum(const A* partial, int64_t rows, int64_t ld, int64_t per, int64_t groups, A* out,
                             cudaStream_t stream) {
  if (groups == 0) return;
  column_group_sum_kernel<A><<<blocks_for(groups, 256), 256, 0, stream>>>(partial, rows, ld, per, groups, out);
}

}  // namespace cuda
}  // namespace kprune
