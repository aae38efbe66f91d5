// accumulate_importance on the GPU. Pass 1: each block owns 32 columns x a token chunk, sums
// act*grad per group in registers and flushes per-group partials into ws [G, U] with atomics
// (plus act^2 into act_sq). Pass 2: grad_sq[u] += sum_g ws[g, u]^2.
#include "utils.cuh"

namespace kprune {
namespace cuda {

constexpr int kCols = 32, kRows = 8, kChunk = 256;

// act, grad: [T, ld]; offsets: [G + 1] (device); ws: fp32 [G, U] zeroed; act_sq: fp32 [U]
template <typename T>
__global__ void importance_partial_kernel(const T* __restrict__ act, const T* __restrict__ grad, int64_t ld,
                                          int64_t units, const int64_t* __restrict__ offsets, int64_t groups,
                                          float* __restrict__ ws, float* __restrict__ act_sq) {
  using A = typename Cvt<T>::acc;
  const int64_t u = int64_t(blockIdx.x) * kCols + threadIdx.x;
  const int64_t lo = offsets[0], hi = offsets[groups];
  const int64_t t0 = lo + int64_t(blockIdx.y) * kChunk;
  if (u >= units || t0 >= hi) return;
  const int64_t t1 = t0 + kChunk < hi ? t0 + kChunk : hi;
  int64_t t = t0 + threadIdx.y;
  if (t >= t1) return;
  int64_t g = math::find_group(offsets, groups, t);
  A group_sum = A(0), sq = A(0);
  for (; t < t1; t += kRows) {
    while (offsets[g + 1] <= t) {  // crossed into a later group: flush
      if (group_sum != A(0)) atomicAdd(ws + g * units + u, float(group_sum));
      group_sum = A(0);
      ++g;
    }
    const A a = Cvt<T>::load(act[t * ld + u]);
    group_sum += a * Cvt<T>::load(grad[t * ld + u]);
    sq += a * a;
  }
  if (group_sum != A(0)) atomicAdd(ws + g * units + u, float(group_sum));
  atomicAdd(act_sq + u, float(sq));
}

// ws: [G, U] -> grad_sq[u] += sum_g ws[g, u]^2
__global__ void importance_square_kernel(const float* __restrict__ ws, int64_t groups, int64_t units,
                                         float* __restrict__ grad_sq) {
  const int64_t u = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (u >= units) return;
  float s = 0.0f;
  for (int64_t g = 0; g < groups; ++g) s += ws[g * units + u] * ws[g * units + u];
  grad_sq[u] += s;
}

// tokens: upper bound of offsets[G] (act rows), used to size the grid.
template <typename T>
void launch_accumulate_importance(const T* act, const T* grad, int64_t ld, int64_t tokens, int64_t units,
                                  const int64_t* offsets, int64_t groups, float* ws, float* grad_sq, float* act_sq,
                                  cudaStream_t stream) {
  if (tokens == 0 || units == 0 || groups == 0) return;
  dim3 block(kCols, kRows);
  dim3 grid(static_cast<unsigned int>((units + kCols - 1) / kCols),
            static_cast<unsigned int>((tokens + kChunk - 1) / kChunk));
  importance_partial_kernel<T><<<grid, block, 0, stream>>>(act, grad, ld, units, offsets, groups, ws, act_sq);
  importance_square_kernel<<<blocks_for(units, 256), 256, 0, stream>>>(ws, groups, units, grad_sq);
}

template void launch_accumulate_importance<float>(const float*, const float*, int64_t, int64_t, int64_t,
                                                  const int64_t*, int64_t, float*, float*, float*, cudaStream_t);
template void launch_accumulate_importance<double>(const double*, const double*, int64_t, int64_t, int64_t,
                                                   const int64_t*, int64_t, float*, float*, float*, cudaStream_t);
template void launch_accumulate_importance<Bf16>(const Bf16*, const Bf16*, int64_t, int64_t, int64_t, const int64_t*,
                                                 int64_t, float*, float*, float*, cudaStream_t);
template void launch_accumulate_importance<__half>(const __half*, const __half*, int64_t, int64_t, int64_t,
                                                   const int64_t*, int64_t, float*, float*, float*, cudaStream_t);

}  // namespace cuda
}  // namespace kprune

#if defined(KPRUNE_TORCH_BINDINGS)
#include "bindings.cuh"

namespace kprune {
namespace cuda {
namespace {

void accumulate_importance_cuda(const at::Tensor& act, const at::Tensor& grad, const at::Tensor& offsets,
                                const at::Tensor& grad_sq_sum, const at::Tensor& act_sq_sum) {
  TORCH_CHECK(act.dim() == 2 && grad.sizes() == act.sizes() && grad.scalar_type() == act.scalar_type(),
              "act and grad must be equal [tokens, units] tensors");
  TORCH_CHECK(offsets.dim() == 1 && offsets.numel() >= 1 && offsets.scalar_type() == at::kLong,
              "offsets must be a non-empty 1-D int64 tensor");
  const int64_t units = act.size(1), groups = offsets.numel() - 1;
  TORCH_CHECK(grad_sq_sum.numel() == units && act_sq_sum.numel() == units &&
                  grad_sq_sum.scalar_type() == at::kFloat && act_sq_sum.scalar_type() == at::kFloat &&
                  grad_sq_sum.is_contiguous() && act_sq_sum.is_contiguous(),
              "grad_sq_sum and act_sq_sum must be contiguous float32 [", units, "]");
  const c10::cuda::CUDAGuard guard(act.device());
  const at::Tensor a = act.contiguous(), g = grad.contiguous(), off = offsets.contiguous();
  at::Tensor ws = at::zeros({groups, units}, act.options().dtype(at::kFloat));
  KPRUNE_DISPATCH_CUDA(a.scalar_type(), "accumulate_importance_cuda", [&] {
    launch_accumulate_importance<cuda_t>(device_ptr<scalar_t>(a), device_ptr<scalar_t>(g), units, a.size(0), units,
                                         off.data_ptr<int64_t>(), groups, ws.data_ptr<float>(),
                                         grad_sq_sum.data_ptr<float>(), act_sq_sum.data_ptr<float>(), stream());
  });
  KPRUNE_CHECK_LAUNCH();
}

}  // namespace

TORCH_LIBRARY_IMPL(kprune, CUDA, m) { m.impl("accumulate_importance", &accumulate_importance_cuda); }

}  // namespace cuda
}  // namespace kprune
#endif  // KPRUNE_TORCH_BINDINGS
