// activation_backward on the GPU: act = f(h + bias) and grad_h = grad_act * f'(h + bias) in one
// elementwise kernel (the same host/device math as the CPU kernel, kprune/hd_math.h).
#include "utils.cuh"

namespace kprune {
namespace cuda {

// h, grad_act, act, grad_h: contiguous [rows, k]; bias: [k]
template <typename T, typename P>
__global__ void activation_backward_kernel(const T* __restrict__ h, const T* __restrict__ grad_act, T* __restrict__ act,
                                           T* __restrict__ grad_h, int64_t rows, int64_t k, const P* __restrict__ bias,
                                           int kind) {
  using A = typename Cvt<T>::acc;
  const int64_t n = rows * k;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    A slope;
    const A y = math::activation_with_grad(A(Cvt<T>::load(h[i]) + A(bias[i % k])), kind, slope);
    act[i] = Cvt<T>::store(y);
    grad_h[i] = Cvt<T>::store(Cvt<T>::load(grad_act[i]) * slope);
  }
}

template <typename T, typename P>
void launch_activation_backward(const T* h, const T* grad_act, T* act, T* grad_h, int64_t rows, int64_t k,
                                const P* bias, int kind, cudaStream_t stream) {
  if (rows * k == 0) return;
  activation_backward_kernel<T, P><<<blocks_for(rows * k, 256), 256, 0, stream>>>(h, grad_act, act, grad_h, rows, k,
                                                                                  bias, kind);
}

#define KPRUNE_INSTANTIATE_ACTIVATION_BACKWARD(T, P) \
  template void launch_activation_backward<T, P>(const T*, const T*, T*, T*, int64_t, int64_t, const P*, int, cudaStream_t);
KPRUNE_INSTANTIATE_ACTIVATION_BACKWARD(float, float)
KPRUNE_INSTANTIATE_ACTIVATION_BACKWARD(double, double)
KPRUNE_INSTANTIATE_ACTIVATION_BACKWARD(Bf16, float)
KPRUNE_INSTANTIATE_ACTIVATION_BACKWARD(__half, float)

}  // namespace cuda
}  // namespace kprune

#if defined(KPRUNE_TORCH_BINDINGS)
#include "bindings.cuh"

namespace kprune {
namespace cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> activation_backward_cuda(const at::Tensor& preact,
                                                            const std::optional<at::Tensor>& bias,
                                                            const at::Tensor& grad_act, c10::string_view activation) {
  check_activation_backward(preact, bias, grad_act);
  const int64_t k = preact.size(1);
  const int kind = parse_activation(activation);
  const c10::cuda::CUDAGuard guard(preact.device());
  const at::Tensor h = preact.contiguous(), g = grad_act.contiguous();
  at::Tensor act = at::empty_like(h), grad_h = at::empty_like(h);
  const auto pdtype = param_dtype(preact.scalar_type());
  const at::Tensor b = bias.has_value() ? bias->to(pdtype).contiguous() : at::zeros({k}, h.options().dtype(pdtype));
  KPRUNE_DISPATCH_CUDA(h.scalar_type(), "activation_backward_cuda", [&] {
    launch_activation_backward<cuda_t, param_t>(device_ptr<scalar_t>(h), device_ptr<scalar_t>(g),
                                                device_ptr<scalar_t>(act), device_ptr<scalar_t>(grad_h), h.size(0), k,
                                                b.data_ptr<param_t>(), kind, stream());
  });
  KPRUNE_CHECK_LAUNCH();
  return {act, grad_h};
}

}  // namespace

TORCH_LIBRARY_IMPL(kprune, CUDA, m) { m.impl("activation_backward", &activation_backward_cuda); }

}  // namespace cuda
}  // namespace kprune
#endif  // KPRUNE_TORCH_BINDINGS
