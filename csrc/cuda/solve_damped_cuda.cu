// solve_damped on the GPU. Small systems (k <= 64): one block per system factors G + lambda I in
// shared memory with the shared host/device Cholesky (escalating lambda), then each thread solves
// right-hand-side columns. Larger systems: cuSOLVER through ATen (solve_common.h).
#include "utils.cuh"

namespace kprune {
namespace cuda {

// gram: float64 [B, k, k]; x: float64 [B, k, m] (rhs in, solution out);
// status[b]: attempts used (> 0) or 0 on failure; final_damping[b]: last lambda tried
__global__ void small_damped_cholesky_kernel(const double* __restrict__ gram, double* __restrict__ x, int64_t k,
                                             int64_t m, double damping, int max_tries, int* __restrict__ status,
                                             double* __restrict__ final_damping) {
  extern __shared__ double l[];  // [k, k]
  __shared__ int ok;
  __shared__ double lambda;
  const double* g = gram + int64_t(blockIdx.x) * k * k;
  double* xb = x + int64_t(blockIdx.x) * k * m;
  if (threadIdx.x == 0) {
    double diag = 0.0;
    for (int64_t i = 0; i < k; ++i) diag += g[i * k + i];
    lambda = math::initial_damping(diag / double(k), damping);
    ok = 0;
  }
  __syncthreads();
  int attempt = 0;
  for (; attempt < max_tries; ++attempt) {
    for (int64_t i = threadIdx.x; i < k * k; i += blockDim.x) l[i] = g[i] + ((i / k == i % k) ? lambda : 0.0);
    __syncthreads();
    if (threadIdx.x == 0) {
      ok = math::cholesky_lower<double>(l, k, k) ? 1 : 0;
      if (!ok) lambda *= 10.0;
    }
    __syncthreads();
    if (ok) break;
  }
  if (threadIdx.x == 0) {
    status[blockIdx.x] = ok ? attempt + 1 : 0;
    final_damping[blockIdx.x] = ok ? lambda : lambda / 10.0;
  }
  if (!ok) return;
  for (int64_t c = threadIdx.x; c < m; c += blockDim.x) math::cholesky_solve_lower<double>(l, k, k, xb + c, 1, m);
}

void launch_small_damped_cholesky(const double* gram, double* x, int64_t batch, int64_t k, int64_t m, double damping,
                                  int max_tries, int* status, double* final_damping, cudaStream_t stream) {
  if (batch == 0) return;
  const size_t shared = size_t(k) * size_t(k) * sizeof(double);
  small_damped_cholesky_kernel<<<static_cast<unsigned int>(batch), 128, shared, stream>>>(
      gram, x, k, m, damping, max_tries, status, final_damping);
}

}  // namespace cuda
}  // namespace kprune

#if defined(KPRUNE_TORCH_BINDINGS)
#include <ATen/ExpandUtils.h>

#include "bindings.cuh"
#include "solve_common.h"

namespace kprune {
namespace cuda {
namespace {

constexpr int64_t kMaxSmallK = 64;

at::Tensor solve_damped_cuda(const at::Tensor& gram, const at::Tensor& rhs, double damping, int64_t max_tries,
                             int64_t precision) {
  check_solve(gram, rhs, damping, max_tries, precision);
  const c10::cuda::CUDAGuard guard(gram.device());
  const int64_t k = gram.size(-1), m = rhs.size(-1);
  std::vector<int64_t> batch_shape =
      at::infer_size(gram.sizes().slice(0, gram.dim() - 2), rhs.sizes().slice(0, rhs.dim() - 2));
  std::vector<int64_t> out_shape = batch_shape, g_shape = batch_shape, r_shape = batch_shape;
  out_shape.insert(out_shape.end(), {k, m});
  g_shape.insert(g_shape.end(), {k, k});
  r_shape.insert(r_shape.end(), {k, m});
  if (k == 0 || m == 0 || c10::multiply_integers(batch_shape) == 0)
    return at::zeros(out_shape, rhs.options().dtype(at::kFloat));
  const bool use64 = precision == 64 || (precision == 0 && k <= 1024);
  const auto dtype = use64 ? at::kDouble : at::kFloat;
  at::Tensor g = gram.expand(g_shape).to(dtype).reshape({-1, k, k}).contiguous();
  at::Tensor r = rhs.expand(r_shape).to(dtype).reshape({-1, k, m});
  if (!(use64 && k <= kMaxSmallK)) return solve_damped_aten(g, r, damping, max_tries).to(at::kFloat).reshape(out_shape);
  at::Tensor x = r.is_alias_of(rhs) ? r.clone(at::MemoryFormat::Contiguous) : r.contiguous();
  const int64_t batch = g.size(0);
  at::Tensor status = at::zeros({batch}, gram.options().dtype(at::kInt));
  at::Tensor final_damping = at::zeros({batch}, gram.options().dtype(at::kDouble));
  launch_small_damped_cholesky(g.data_ptr<double>(), x.data_ptr<double>(), batch, k, m, damping,
                               static_cast<int>(max_tries), status.data_ptr<int>(), final_damping.data_ptr<double>(),
                               stream());
  KPRUNE_CHECK_LAUNCH();
  const at::Tensor failed = status == 0;
  if (failed.any().item<bool>()) damped_cholesky_failed(max_tries, final_damping.max().item<double>());
  return x.to(at::kFloat).reshape(out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(kprune, CUDA, m) { m.impl("solve_damped", &solve_damped_cuda); }

}  // namespace cuda
}  // namespace kprune
#endif  // KPRUNE_TORCH_BINDINGS
