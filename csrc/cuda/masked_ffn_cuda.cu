// masked_ffn on the GPU: cuBLAS GEMMs (through ATen) on the kept rows/columns, with the
// bias + activation + mask epilogue (and its backward) as single fused elementwise kernels.
#include "utils.cuh"

namespace kprune {
namespace cuda {

constexpr int kCols = 32, kRows = 8, kRowChunk = 256;

// h: [rows, k] = x W_in[kept]^T (becomes act * mask); act: [rows, k]; bias, mask: [k]
template <typename T, typename P>
__global__ void ffn_forward_kernel(T* __restrict__ h, T* __restrict__ act, int64_t rows, int64_t k,
                                   const P* __restrict__ bias, const P* __restrict__ mask, int kind) {
  using A = typename Cvt<T>::acc;
  const int64_t n = rows * k;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = i % k;
    const T y = Cvt<T>::store(math::activation(A(Cvt<T>::load(h[i]) + A(bias[j])), kind));
    act[i] = y;
    h[i] = Cvt<T>::store(Cvt<T>::load(y) * A(mask[j]));
  }
}

// gs: [rows, k] = grad_out W_out[:, kept] (becomes the pre-activation gradient); h: x W_in[kept]^T;
// act, grad_act (nullable): [rows, k]; partial: [partial_rows, k], each thread's share of sum_t gs * act
template <typename T, typename P>
__global__ void ffn_backward_kernel(T* __restrict__ gs, const T* __restrict__ h, const T* __restrict__ act,
                                    const T* __restrict__ grad_act, int64_t rows, int64_t k,
                                    const P* __restrict__ bias, const P* __restrict__ mask, int kind,
                                    typename Cvt<T>::acc* __restrict__ partial) {
  using A = typename Cvt<T>::acc;
  const int64_t j = int64_t(blockIdx.x) * kCols + threadIdx.x;
  const int64_t r0 = int64_t(blockIdx.y) * kRowChunk;
  if (j >= k) return;
  const int64_t r1 = r0 + kRowChunk < rows ? r0 + kRowChunk : rows;
  A dot = A(0);
  for (int64_t t = r0 + threadIdx.y; t < r1; t += kRows) {
    const int64_t i = t * k + j;
    const A g = Cvt<T>::load(gs[i]);
    dot += g * Cvt<T>::load(act[i]);
    A up = g * A(mask[j]);
    if (grad_act) up += Cvt<T>::load(grad_act[i]);
    gs[i] = Cvt<T>::store(up * math::activation_grad(A(Cvt<T>::load(h[i]) + A(bias[j])), kind));
  }
  partial[(int64_t(blockIdx.y) * kRows + threadIdx.y) * k + j] = dot;
}

template <typename T, typename P>
void launch_ffn_forward(T* h, T* act, int64_t rows, int64_t k, const P* bias, const P* mask, int kind,
                        cudaStream_t stream) {
  if (rows * k == 0) return;
  ffn_forward_kernel<T, P><<<blocks_for(rows * k, 256), 256, 0, stream>>>(h, act, rows, k, bias, mask, kind);
}

template <typename T, typename P>
void launch_ffn_backward(T* gs, const T* h, const T* act, const T* grad_act, int64_t rows, int64_t k, const P* bias,
                         const P* mask, int kind, typename Cvt<T>::acc* partial, typename Cvt<T>::acc* grad_mask,
                         cudaStream_t stream) {
  if (rows * k == 0) return;
  dim3 grid(static_cast<unsigned int>((k + kCols - 1) / kCols), static_cast<unsigned int>((rows + kRowChunk - 1) / kRowChunk));
  ffn_backward_kernel<T, P><<<grid, dim3(kCols, kRows), 0, stream>>>(gs, h, act, grad_act, rows, k, bias, mask, kind,
                                                                     partial);
  launch_column_group_sum(partial, partial_rows(rows, kRowChunk, kRows), k, int64_t(1), k, grad_mask, stream);
}

#define KPRUNE_INSTANTIATE_FFN(T, P)                                                                            \
  template void launch_ffn_forward<T, P>(T*, T*, int64_t, int64_t, const P*, const P*, int, cudaStream_t);       \
  template void launch_ffn_backward<T, P>(T*, const T*, const T*, const T*, int64_t, int64_t, const P*, const P*, \
                                          int, Cvt<T>::acc*, Cvt<T>::acc*, cudaStream_t);
KPRUNE_INSTANTIATE_FFN(float, float)
KPRUNE_INSTANTIATE_FFN(double, double)
KPRUNE_INSTANTIATE_FFN(Bf16, float)
KPRUNE_INSTANTIATE_FFN(__half, float)

}  // namespace cuda
}  // namespace kprune

#if defined(KPRUNE_TORCH_BINDINGS)
#include <ATen/ops/index_select.h>

#include "bindings.cuh"

namespace kprune {
namespace cuda {
namespace {

at::Tensor bias_param(const std::optional<at::Tensor>& b_in, const at::Tensor& kept, at::ScalarType dtype) {
  if (!b_in.has_value()) return at::zeros({kept.size(0)}, kept.options().dtype(dtype));
  return b_in->index_select(0, kept).to(dtype).contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ffn_forward_impl(const at::Tensor& x, const at::Tensor& w_in,
                                                                const std::optional<at::Tensor>& b_in,
                                                                const at::Tensor& w_out,
                                                                const std::optional<at::Tensor>& b_out,
                                                                const at::Tensor& kept, const at::Tensor& mask,
                                                                c10::string_view activation, bool keep_preact) {
  check_ffn(x, w_in, b_in, w_out, kept, mask);
  const int kind = parse_activation(activation);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor w_in_k = w_in.index_select(0, kept);
  at::Tensor h = at::mm(x, w_in_k.t());
  at::Tensor preact = keep_preact ? h.clone() : at::Tensor();
  at::Tensor act = at::empty_like(h);
  const auto pdtype = param_dtype(x.scalar_type());
  const at::Tensor bias = bias_param(b_in, kept, pdtype), mask_p = mask.to(pdtype).contiguous();
  KPRUNE_DISPATCH_CUDA(x.scalar_type(), "masked_ffn_cuda", [&] {
    launch_ffn_forward<cuda_t, param_t>(device_ptr<scalar_t>(h), device_ptr<scalar_t>(act), h.size(0), h.size(1),
                                        bias.data_ptr<param_t>(), mask_p.data_ptr<param_t>(), kind, stream());
  });
  KPRUNE_CHECK_LAUNCH();
  const at::Tensor w_out_k = w_out.index_select(1, kept);
  at::Tensor out = b_out.has_value() ? at::addmm(*b_out, h, w_out_k.t()) : at::mm(h, w_out_k.t());
  return {out, act, preact};
}

std::tuple<at::Tensor, at::Tensor> masked_ffn_cuda(const at::Tensor& x, const at::Tensor& w_in,
                                                   const std::optional<at::Tensor>& b_in, const at::Tensor& w_out,
                                                   const std::optional<at::Tensor>& b_out, const at::Tensor& kept,
                                                   const at::Tensor& mask, c10::string_view activation) {
  auto [out, act, preact] = ffn_forward_impl(x, w_in, b_in, w_out, b_out, kept, mask, activation, false);
  return {out, act};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_ffn_with_preact_cuda(
    const at::Tensor& x, const at::Tensor& w_in, const std::optional<at::Tensor>& b_in, const at::Tensor& w_out,
    const std::optional<at::Tensor>& b_out, const at::Tensor& kept, const at::Tensor& mask,
    c10::string_view activation) {
  return ffn_forward_impl(x, w_in, b_in, w_out, b_out, kept, mask, activation, true);
}

std::tuple<at::Tensor, at::Tensor> masked_ffn_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_act, const at::Tensor& x, const at::Tensor& w_in,
    const std::optional<at::Tensor>& b_in, const at::Tensor& w_out, const at::Tensor& kept, const at::Tensor& mask,
    const at::Tensor& act, c10::string_view activation, bool need_x, bool need_mask,
    const std::optional<at::Tensor>& preact) {
  const FfnShapes s = check_ffn(x, w_in, b_in, w_out, kept, mask);
  check_ffn_backward(s, x, w_out, grad_out, act, preact, grad_act);
  const int kind = parse_activation(activation);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto dtype = x.scalar_type();
  const at::Tensor w_in_k = w_in.index_select(0, kept), w_out_k = w_out.index_select(1, kept);
  at::Tensor gs = at::mm(grad_out.to(dtype), w_out_k);
  const bool saved = preact.has_value() && preact->defined();
  const at::Tensor h = saved ? preact->to(dtype).contiguous() : at::mm(x, w_in_k.t());
  const at::Tensor act_c = act.to(dtype).contiguous();
  const at::Tensor ga = grad_act.has_value() ? grad_act->to(dtype).contiguous() : at::Tensor();
  const auto pdtype = param_dtype(dtype);
  const at::Tensor bias = bias_param(b_in, kept, pdtype), mask_p = mask.to(pdtype).contiguous();
  at::Tensor grad_mask_acc = at::zeros({kept.size(0)}, x.options().dtype(pdtype));
  at::Tensor partial = at::empty({partial_rows(gs.size(0), kRowChunk, kRows) * gs.size(1)}, x.options().dtype(pdtype));
  KPRUNE_DISPATCH_CUDA(dtype, "masked_ffn_backward_cuda", [&] {
    launch_ffn_backward<cuda_t, param_t>(device_ptr<scalar_t>(gs), device_ptr<scalar_t>(h), device_ptr<scalar_t>(act_c),
                                         ga.defined() ? device_ptr<scalar_t>(ga) : nullptr, gs.size(0), gs.size(1),
                                         bias.data_ptr<param_t>(), mask_p.data_ptr<param_t>(), kind,
                                         partial.data_ptr<param_t>(), grad_mask_acc.data_ptr<param_t>(), stream());
  });
  KPRUNE_CHECK_LAUNCH();
  at::Tensor grad_x = need_x ? at::mm(gs, w_in_k) : at::empty({0}, x.options());
  at::Tensor grad_mask = need_mask ? grad_mask_acc.to(mask.scalar_type()) : at::empty({0}, mask.options());
  return {grad_x, grad_mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(kprune, CUDA, m) {
  m.impl("masked_ffn", &masked_ffn_cuda);
  m.impl("masked_ffn_with_preact", &masked_ffn_with_preact_cuda);
  m.impl("masked_ffn_backward", &masked_ffn_backward_cuda);
}

}  // namespace cuda
}  // namespace kprune
#endif  // KPRUNE_TORCH_BINDINGS
