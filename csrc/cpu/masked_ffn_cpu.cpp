// masked_ffn on the CPU: GEMMs on the kept rows/columns of the weights only, with the
// bias + activation + mask epilogue fused in one pass between them (and its mirror in backward).
#include <torch/library.h>

#include <tuple>

#include "utils.h"

namespace kprune {
namespace cpu {
namespace {

at::Tensor bias_param(const std::optional<at::Tensor>& b_in, const at::Tensor& kept, at::ScalarType dtype) {
  if (!b_in.has_value()) return at::zeros({kept.size(0)}, kept.options().dtype(dtype));
  return select_kept(*b_in, 0, kept).to(dtype).contiguous();
}

// x: [T, d]; w_in: [F, d]; w_out: [d_out, F]; kept: [k]; mask: [k]
// -> (out [T, d_out], act [T, k], preact [T, k] = x W_in[kept]^T when keep_preact, else undefined)
std::tuple<at::Tensor, at::Tensor, at::Tensor> ffn_forward_impl(const at::Tensor& x, const at::Tensor& w_in,
                                                                const std::optional<at::Tensor>& b_in,
                                                                const at::Tensor& w_out,
                                                                const std::optional<at::Tensor>& b_out,
                                                                const at::Tensor& kept, const at::Tensor& mask,
                                                                c10::string_view activation, bool keep_preact) {
  const FfnShapes s = check_ffn(x, w_in, b_in, w_out, kept, mask);
  const int kind = parse_activation(std::string(activation));
  const at::Tensor w_in_k = select_kept(w_in, 0, kept);  // [k, d]
  at::Tensor h = gemm_nt(x, w_in_k).contiguous();          // [T, k]; becomes act * mask
  at::Tensor preact = keep_preact ? h.clone() : at::Tensor();
  at::Tensor act = at::empty_like(h);
  const at::Tensor bias = bias_param(b_in, kept, param_dtype(x.scalar_type()));
  const at::Tensor mask_f = mask.to(param_dtype(x.scalar_type())).contiguous();
  if (s.tokens > 0 && s.k > 0) {
    const KernelTable& table = kernels();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "masked_ffn_cpu", [&] {
      using T = typename Storage<scalar_t>::type;
      T* hp = data<scalar_t>(h);
      T* ap = data<scalar_t>(act);
      const Param<T>* bp = bias.data_ptr<Param<T>>();
      const Param<T>* mp = mask_f.data_ptr<Param<T>>();
      at::parallel_for(0, s.tokens, std::max<int64_t>(1, 16384 / s.k), [&](int64_t r0, int64_t r1) {
        run_ffn_forward(table, hp, ap, s.k, r0, r1, s.k, bp, mp, kind);
      });
    });
  }
  const at::Tensor w_out_k = select_kept(w_out, 1, kept);  // [d_out, k]
  at::Tensor out = gemm_nt(h, w_out_k, b_out);
  return {out, act, preact};
}

std::tuple<at::Tensor, at::Tensor> masked_ffn_cpu(const at::Tensor& x, const at::Tensor& w_in,
                                                  const std::optional<at::Tensor>& b_in, const at::Tensor& w_out,
                                                  const std::optional<at::Tensor>& b_out, const at::Tensor& kept,
                                                  const at::Tensor& mask, c10::string_view activation) {
  auto [out, act, preact] = ffn_forward_impl(x, w_in, b_in, w_out, b_out, kept, mask, activation, false);
  return {out, act};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_ffn_with_preact_cpu(
    const at::Tensor& x, const at::Tensor& w_in, const std::optional<at::Tensor>& b_in, const at::Tensor& w_out,
    const std::optional<at::Tensor>& b_out, const at::Tensor& kept, const at::Tensor& mask,
    c10::string_view activation) {
  return ffn_forward_impl(x, w_in, b_in, w_out, b_out, kept, mask, activation, true);
}

// grad_out: [T, d_out]; grad_act: [T, k] or None -> (grad_x [T, d] or [0], grad_mask [k] or [0])
std::tuple<at::Tensor, at::Tensor> masked_ffn_backward_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_act, const at::Tensor& x, const at::Tensor& w_in,
    const std::optional<at::Tensor>& b_in, const at::Tensor& w_out, const at::Tensor& kept, const at::Tensor& mask,
    const at::Tensor& act, c10::string_view activation, bool need_x, bool need_mask,
    const std::optional<at::Tensor>& preact) {
  const FfnShapes s = check_ffn(x, w_in, b_in, w_out, kept, mask);
  const int kind = parse_activation(std::string(activation));
  check_ffn_backward(s, x, w_out, grad_out, act, preact, grad_act);
  const auto dtype = x.scalar_type();
  const at::Tensor w_out_k = select_kept(w_out, 1, kept);         // [d_out, k]
  at::Tensor gs = gemm_nt(grad_out.to(dtype), w_out_k.t()).contiguous();  // [T, k]
  const at::Tensor act_c = act.to(dtype).contiguous();
  at::Tensor grad_x = at::empty({0}, x.options());
  at::Tensor grad_mask = at::empty({0}, mask.options());
  if (!need_x) {
    if (need_mask) grad_mask = (gs.to(at::kFloat) * act_c).sum(0).to(mask.scalar_type());
    return {grad_x, grad_mask};
  }
  const at::Tensor w_in_k = select_kept(w_in, 0, kept);  // [k, d]
  // [T, k] without bias: saved by masked_ffn_with_preact, else recomputed
  const bool saved = preact.has_value() && preact->defined();
  const at::Tensor h = saved ? preact->to(dtype).contiguous() : gemm_nt(x, w_in_k).contiguous();
  const at::Tensor ga = grad_act.has_value() ? grad_act->to(dtype).contiguous() : at::Tensor();
  const at::Tensor bias = bias_param(b_in, kept, param_dtype(x.scalar_type()));
  const at::Tensor mask_f = mask.to(param_dtype(x.scalar_type())).contiguous();
  const int64_t chunks = num_chunks(s.tokens);
  const auto acc_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor partial = at::zeros({chunks, s.k}, x.options().dtype(acc_dtype));
  if (s.tokens > 0 && s.k > 0) {
    const KernelTable& table = kernels();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "masked_ffn_backward_cpu", [&] {
      using T = typename Storage<scalar_t>::type;
      using A = typename Cvt<T>::acc;
      T* gp = data<scalar_t>(gs);
      const T* hp = data<scalar_t>(h);
      const T* ap = data<scalar_t>(act_c);
      const T* gap = ga.defined() ? data<scalar_t>(ga) : nullptr;
      const Param<T>* bp = bias.data_ptr<Param<T>>();
      const Param<T>* mp = mask_f.data_ptr<Param<T>>();
      A* pp = partial.data_ptr<A>();
      const int64_t rows = (s.tokens + chunks - 1) / chunks;
      at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t r0 = c * rows, r1 = std::min(s.tokens, r0 + rows);
          if (r0 >= r1) continue;
          run_ffn_backward(table, gp, hp, ap, gap, s.k, r0, r1, s.k, bp, mp, kind, pp + c * s.k);
        }
      });
    });
  }
  grad_x = gemm_nt(gs, w_in_k.t());  // gs now holds the pre-activation gradient
  if (need_mask) grad_mask = partial.sum(0).to(mask.scalar_type());
  return {grad_x, grad_mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(kprune, CPU, m) {
  m.impl("masked_ffn", &masked_ffn_cpu);
  m.impl("masked_ffn_with_preact", &masked_ffn_with_preact_cpu);
  m.impl("masked_ffn_backward", &masked_ffn_backward_cpu);
}

}  // namespace cpu
}  // namespace kprune
