// masked_attention_output on the GPU: a gather + mask kernel over the kept heads, one cuBLAS GEMM
// on the kept columns of W_out; backward scatters into the kept heads' columns.
#include "utils.cuh"

namespace kprune {
namespace cuda {

constexpr int kCols = 32, kRows = 8, kRowChunk = 256;

// context: [rows, H*hs] (ldc); heads: [k]; act, scaled: [rows, k*hs]
template <typename T, typename P>
__global__ void attention_forward_kernel(const T* __restrict__ context, int64_t ldc, const int64_t* __restrict__ heads,
                                         int64_t k, int64_t hs, const P* __restrict__ mask, T* __restrict__ act,
                                         T* __restrict__ scaled, int64_t rows) {
  using A = typename Cvt<T>::acc;
  const int64_t width = k * hs, n = rows * width;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / width, c = i % width, j = c / hs;
    const T v = context[t * ldc + heads[j] * hs + c % hs];
    act[i] = v;
    scaled[i] = Cvt<T>::store(Cvt<T>::load(v) * A(mask[j]));
  }
}

// gs, act, grad_act (nullable): [rows, k*hs]; grad_context: [rows, H*hs] (ldc), pruned heads untouched;
// partial: [partial_rows, k*hs], each thread's share of sum_t gs * act (summed per head afterwards)
template <typename T, typename P>
__global__ void attention_backward_kernel(const T* __restrict__ gs, const T* __restrict__ act,
                                          const T* __restrict__ grad_act, const int64_t* __restrict__ heads, int64_t k,
                                          int64_t hs, const P* __restrict__ mask, T* __restrict__ grad_context,
                                          int64_t ldc, int64_t rows, typename Cvt<T>::acc* __restrict__ partial) {
  using A = typename Cvt<T>::acc;
  const int64_t width = k * hs;
  const int64_t c = int64_t(blockIdx.x) * kCols + threadIdx.x;
  const int64_t r0 = int64_t(blockIdx.y) * kRowChunk;
  if (c >= width) return;
  const int64_t r1 = r0 + kRowChunk < rows ? r0 + kRowChunk : rows;
  const int64_t j = c / hs, dst_col = heads[j] * hs + c % hs;
  const A m = A(mask[j]);
  A dot = A(0);
  for (int64_t t = r0 + threadIdx.y; t < r1; t += kRows) {
    const A g = Cvt<T>::load(gs[t * width + c]);
    dot += g * Cvt<T>::load(act[t * width + c]);
    A v = g * m;
    if (grad_act) v += Cvt<T>::load(grad_act[t * width + c]);
    grad_context[t * ldc + dst_col] = Cvt<T>::store(v);
  }
  partial[(int64_t(blockIdx.y) * kRows + threadIdx.y) * width + c] = dot;
}

template <typename T, typename P>
void launch_attention_forward(const T* context, int64_t ldc, const int64_t* heads, int64_t k, int64_t hs,
                              const P* mask, T* act, T* scaled, int64_t rows, cudaStream_t stream) {
  if (rows * k * hs == 0) return;
  attention_forward_kernel<T, P><<<blocks_for(rows * k * hs, 256), 256, 0, stream>>>(context, ldc, heads, k, hs, mask,
                                                                                     act, scaled, rows);
}

template <typename T, typename P>
void launch_attention_backward(const T* gs, const T* act, const T* grad_act, const int64_t* heads, int64_t k,
                               int64_t hs, const P* mask, T* grad_context, int64_t ldc, int64_t rows,
                               typename Cvt<T>::acc* partial, typename Cvt<T>::acc* grad_mask, cudaStream_t stream) {
  if (rows * k * hs == 0) return;
  dim3 grid(static_cast<unsigned int>((k * hs + kCols - 1) / kCols),
            static_cast<unsigned int>((rows + kRowChunk - 1) / kRowChunk));
  attention_backward_kernel<T, P><<<grid, dim3(kCols, kRows), 0, stream>>>(gs, act, grad_act, heads, k, hs, mask,
                                                                           grad_context, ldc, rows, partial);
  launch_column_group_sum(partial, partial_rows(rows, kRowChunk, kRows), k * hs, hs, k, grad_mask, stream);
}

#define KPRUNE_INSTANTIATE_ATTENTION(T, P)                                                                         \
  template void launch_attention_forward<T, P>(const T*, int64_t, const int64_t*, int64_t, int64_t, const P*, T*, \
                                               T*, int64_t, cudaStream_t);                                         \
  template void launch_attention_backward<T, P>(const T*, const T*, const T*, const int64_t*, int64_t, int64_t,     \
                                                const P*, T*, int64_t, int64_t, Cvt<T>::acc*, Cvt<T>::acc*,     \
                                                cudaStream_t);
KPRUNE_INSTANTIATE_ATTENTION(float, float)
KPRUNE_INSTANTIATE_ATTENTION(double, double)
KPRUNE_INSTANTIATE_ATTENTION(Bf16, float)
KPRUNE_INSTANTIATE_ATTENTION(__half, float)

}  // namespace cuda
}  // namespace kprune

#if defined(KPRUNE_TORCH_BINDINGS)
#include <ATen/ops/index_select.h>

#include "bindings.cuh"

namespace kprune {
namespace cuda {
namespace {

at::Tensor kept_columns(const at::Tensor& heads, int64_t hs) {
  return (heads.unsqueeze(1) * hs + at::arange(hs, heads.options())).reshape({-1});
}

std::tuple<at::Tensor, at::Tensor> masked_attention_output_cuda(const at::Tensor& context, const at::Tensor& w_out,
                                                                const std::optional<at::Tensor>& b_out,
                                                                const at::Tensor& kept_heads, const at::Tensor& mask,
                                                                int64_t head_size) {
  check_attention(context, w_out, kept_heads, mask, head_size);
  const c10::cuda::CUDAGuard guard(context.device());
  const int64_t rows = context.size(0), k = kept_heads.size(0);
  const at::Tensor ctx = context.stride(1) == 1 ? context : context.contiguous();
  const at::Tensor heads = kept_heads.contiguous();
  const at::Tensor mask_p = mask.to(param_dtype(context.scalar_type())).contiguous();
  at::Tensor act = at::empty({rows, k * head_size}, context.options());
  at::Tensor scaled = at::empty_like(act);
  KPRUNE_DISPATCH_CUDA(context.scalar_type(), "masked_attention_output_cuda", [&] {
    launch_attention_forward<cuda_t, param_t>(device_ptr<scalar_t>(ctx), ctx.stride(0), heads.data_ptr<int64_t>(), k,
                                              head_size, mask_p.data_ptr<param_t>(), device_ptr<scalar_t>(act),
                                              device_ptr<scalar_t>(scaled), rows, stream());
  });
  KPRUNE_CHECK_LAUNCH();
  const at::Tensor w_k = w_out.index_select(1, kept_columns(heads, head_size));
  at::Tensor out = b_out.has_value() ? at::addmm(*b_out, scaled, w_k.t()) : at::mm(scaled, w_k.t());
  return {out, act};
}

std::tuple<at::Tensor, at::Tensor> masked_attention_output_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_act, const at::Tensor& context,
    const at::Tensor& w_out, const at::Tensor& kept_heads, const at::Tensor& mask, const at::Tensor& act,
    int64_t head_size, bool need_context, bool need_mask) {
  check_attention(context, w_out, kept_heads, mask, head_size);
  check_attention_backward(context, w_out, kept_heads, head_size, grad_out, act, grad_act);
  const c10::cuda::CUDAGuard guard(context.device());
  const auto dtype = context.scalar_type();
  const int64_t rows = context.size(0), k = kept_heads.size(0);
  const at::Tensor heads = kept_heads.contiguous();
  const at::Tensor w_k = w_out.index_select(1, kept_columns(heads, head_size));
  const at::Tensor gs = at::mm(grad_out.to(dtype), w_k);
  const at::Tensor act_c = act.to(dtype).contiguous();
  const at::Tensor ga = grad_act.has_value() ? grad_act->to(dtype).contiguous() : at::Tensor();
  const auto pdtype = param_dtype(dtype);
  const at::Tensor mask_p = mask.to(pdtype).contiguous();
  at::Tensor grad_context = at::zeros(context.sizes(), context.options());
  at::Tensor grad_mask_acc = at::zeros({k}, context.options().dtype(pdtype));
  at::Tensor partial = at::empty({partial_rows(rows, kRowChunk, kRows) * k * head_size}, context.options().dtype(pdtype));
  KPRUNE_DISPATCH_CUDA(dtype, "masked_attention_output_backward_cuda", [&] {
    launch_attention_backward<cuda_t, param_t>(device_ptr<scalar_t>(gs), device_ptr<scalar_t>(act_c),
                                               ga.defined() ? device_ptr<scalar_t>(ga) : nullptr,
                                               heads.data_ptr<int64_t>(), k, head_size, mask_p.data_ptr<param_t>(),
                                               device_ptr<scalar_t>(grad_context), context.size(1), rows,
                                               partial.data_ptr<param_t>(), grad_mask_acc.data_ptr<param_t>(), stream());
  });
  KPRUNE_CHECK_LAUNCH();
  return {need_context ? grad_context : at::empty({0}, context.options()),
          need_mask ? grad_mask_acc.to(mask.scalar_type()) : at::empty({0}, mask.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(kprune, CUDA, m) {
  m.impl("masked_attention_output", &masked_attention_output_cuda);
  m.impl("masked_attention_output_backward", &masked_attention_output_backward_cuda);
}

}  // namespace cuda
}  // namespace kprune
#endif  // KPRUNE_TORCH_BINDINGS
