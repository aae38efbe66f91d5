// masked_attention_output on the CPU: one pass gathers the kept heads' contexts and applies the
// per-head mask, then one GEMM on the kept columns of W_out.
#include <torch/library.h>

#include <ATen/ops/arange.h>

#include <tuple>

#include "utils.h"

namespace kprune {
namespace cpu {
namespace {

// kept_heads: [k] -> int64 [k * head_size] column indices
at::Tensor kept_columns(const at::Tensor& kept_heads, int64_t head_size) {
  return (kept_heads.unsqueeze(1) * head_size + at::arange(head_size, kept_heads.options())).reshape({-1});
}

// context: [T, H * hs]; w_out: [d, H * hs] -> (out [T, d], act [T, k * hs])
std::tuple<at::Tensor, at::Tensor> masked_attention_output_cpu(const at::Tensor& context, const at::Tensor& w_out,
                                                               const std::optional<at::Tensor>& b_out,
                                                               const at::Tensor& kept_heads, const at::Tensor& mask,
                                                               int64_t head_size) {
  check_attention(context, w_out, kept_heads, mask, head_size);
  const int64_t tokens = context.size(0), k = kept_heads.size(0), width = k * head_size;
  const at::Tensor ctx = context.stride(1) == 1 ? context : context.contiguous();
  const at::Tensor heads = kept_heads.contiguous();
  const at::Tensor mask_f = mask.to(param_dtype(context.scalar_type())).contiguous();
  at::Tensor act = at::empty({tokens, width}, context.options());
  at::Tensor scaled = at::empty({tokens, width}, context.options());
  if (tokens > 0 && width > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, context.scalar_type(), "masked_attention_cpu", [&] {
      using T = typename Storage<scalar_t>::type;
      const T* cp = data<scalar_t>(ctx);
      T* ap = data<scalar_t>(act);
      T* sp = data<scalar_t>(scaled);
      const int64_t* hp = heads.data_ptr<int64_t>();
      const Param<T>* mp = mask_f.data_ptr<Param<T>>();
      at::parallel_for(0, tokens, std::max<int64_t>(1, 32768 / width), [&](int64_t r0, int64_t r1) {
        attention_forward_rows<T, Param<T>>(cp, ctx.stride(0), hp, k, head_size, mp, ap, sp, r0, r1);
      });
    });
  }
  const at::Tensor w_k = select_kept(w_out, 1, kept_columns(heads, head_size));  // [d, k * hs]
  at::Tensor out = gemm_nt(scaled, w_k, b_out);
  return {out, act};
}

// grad_out: [T, d]; grad_act: [T, k * hs] or None -> (grad_context [T, H * hs] or [0], grad_mask [k] or [0])
std::tuple<at::Tensor, at::Tensor> masked_attention_output_backward_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_act, const at::Tensor& context,
    const at::Tensor& w_out, const at::Tensor& kept_heads, const at::Tensor& mask, const at::Tensor& act,
    int64_t head_size, bool need_context, bool need_mask) {
  check_attention(context, w_out, kept_heads, mask, head_size);
  const int64_t tokens = context.size(0), k = kept_heads.size(0), width = k * head_size;
  check_attention_backward(context, w_out, kept_heads, head_size, grad_out, act, grad_act);
  const auto dtype = context.scalar_type();
  const at::Tensor heads = kept_heads.contiguous();
  const at::Tensor w_k = select_kept(w_out, 1, kept_columns(heads, head_size));  // [d, k * hs]
  const at::Tensor gs = gemm_nt(grad_out.to(dtype), w_k.t()).contiguous();         // [T, k * hs]
  const at::Tensor act_c = act.to(dtype).contiguous();
  const at::Tensor ga = grad_act.has_value() ? grad_act->to(dtype).contiguous() : at::Tensor();
  at::Tensor grad_context = need_context ? at::zeros(context.sizes(), context.options()) : at::empty({0}, context.options());
  at::Tensor grad_mask = at::empty({0}, mask.options());
  const at::Tensor mask_f = mask.to(param_dtype(context.scalar_type())).contiguous();
  const int64_t chunks = num_chunks(tokens);
  at::Tensor partial = at::zeros({chunks, k}, context.options().dtype(dtype == at::kDouble ? at::kDouble : at::kFloat));
  if (tokens > 0 && width > 0 && need_context) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "masked_attention_backward_cpu", [&] {
      using T = typename Storage<scalar_t>::type;
      using A = typename Cvt<T>::acc;
      const T* gp = data<scalar_t>(gs);
      const T* ap = data<scalar_t>(act_c);
      const T* gap = ga.defined() ? data<scalar_t>(ga) : nullptr;
      T* dp = data<scalar_t>(grad_context);
      const int64_t* hp = heads.data_ptr<int64_t>();
      const Param<T>* mp = mask_f.data_ptr<Param<T>>();
      A* pp = partial.data_ptr<A>();
      const int64_t rows = (tokens + chunks - 1) / chunks;
      at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t r0 = c * rows, r1 = std::min(tokens, r0 + rows);
          if (r0 < r1)
            attention_backward_rows<T, Param<T>>(gp, ap, gap, hp, k, head_size, mp, dp, context.size(1), r0, r1, pp + c * k);
        }
      });
    });
    if (need_mask) grad_mask = partial.sum(0).to(mask.scalar_type());
  } else if (need_mask) {
    grad_mask = (gs.to(at::kFloat) * act_c).reshape({tokens, k, head_size}).sum({0, 2}).to(mask.scalar_type());
  }
  return {grad_context, grad_mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(kprune, CPU, m) {
  m.impl("masked_attention_output", &masked_attention_output_cpu);
  m.impl("masked_attention_output_backward", &masked_attention_output_backward_cpu);
}

}  // namespace cpu
}  // namespace kprune
