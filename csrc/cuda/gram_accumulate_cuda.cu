// gram_accumulate on the GPU: one gather + fp32 conversion kernel, then two cuBLAS GEMMs in the
// accumulators' type (float32, or float64).
#include "utils.cuh"

namespace kprune {
namespace cuda {

// a: [rows, *] (strides s0, s1); columns: [k] -> out: fp32 [rows, k]
template <typename T>
__global__ void gather_float_kernel(const T* __restrict__ a, int64_t s0, int64_t s1, const int64_t* __restrict__ columns,
                                    int64_t k, int64_t rows, float* __restrict__ out) {
  const int64_t n = rows * k;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = float(Cvt<T>::load(a[(i / k) * s0 + columns[i % k] * s1]));
}

template <typename T>
void launch_gather_float(const T* a, int64_t s0, int64_t s1, const int64_t* columns, int64_t k, int64_t rows,
                         float* out, cudaStream_t stream) {
  if (rows * k == 0) return;
  gather_float_kernel<T><<<blocks_for(rows * k, 256), 256, 0, stream>>>(a, s0, s1, columns, k, rows, out);
}

template void launch_gather_float<float>(const float*, int64_t, int64_t, const int64_t*, int64_t, int64_t, float*,
                                         cudaStream_t);
template void launch_gather_float<double>(const double*, int64_t, int64_t, const int64_t*, int64_t, int64_t, float*,
                                          cudaStream_t);
template void launch_gather_float<Bf16>(const Bf16*, int64_t, int64_t, const int64_t*, int64_t, int64_t, float*,
                                        cudaStream_t);
template void launch_gather_float<__half>(const __half*, int64_t, int64_t, const int64_t*, int64_t, int64_t, float*,
                                          cudaStream_t);

}  // namespace cuda
}  // namespace kprune

#if defined(KPRUNE_TORCH_BINDINGS)
#include "bindings.cuh"

namespace kprune {
namespace cuda {
namespace {

void gram_accumulate_cuda(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& columns,
                          const at::Tensor& gram, const at::Tensor& cross) {
  const int64_t k = check_gram(a, b, columns, gram, cross);
  const bool has_cols = columns.has_value() && columns->defined();
  const c10::cuda::CUDAGuard guard(a.device());
  if (a.size(0) == 0 || k == 0) return;
  at::Tensor sel;
  if (!has_cols) {
    sel = a.to(at::kFloat);
  } else {
    const at::Tensor cols = columns->contiguous();
    sel = at::empty({a.size(0), k}, a.options().dtype(at::kFloat));
    KPRUNE_DISPATCH_CUDA(a.scalar_type(), "gram_gather_cuda", [&] {
      launch_gather_float<cuda_t>(device_ptr<scalar_t>(a), a.stride(0), a.stride(1), cols.data_ptr<int64_t>(), k,
                                  a.size(0), sel.data_ptr<float>(), stream());
    });
    KPRUNE_CHECK_LAUNCH();
  }
  if (gram.scalar_type() != at::kFloat) sel = sel.to(gram.scalar_type());   // float64 accumulators: exact products
  gram.addmm_(sel.t(), sel);
  cross.addmm_(sel.t(), b.to(gram.scalar_type()));
}

}  // namespace

TORCH_LIBRARY_IMPL(kprune, CUDA, m) { m.impl("gram_accumulate", &gram_accumulate_cuda); }

}  // namespace cuda
}  // namespace kprune
#endif  // KPRUNE_TORCH_BINDINGS
