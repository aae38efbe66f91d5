// activation_backward on the CPU: the FFN activation recomputed from its pre-activation and its
// backward, in one pass (one exp per element for GELU), for the pruning loop's sublayer backward.
#include <torch/library.h>

#include <tuple>

#include "utils.h"

namespace kprune {
namespace cpu {
namespace {

// preact, grad_act: [T, k]; bias: [k] or None -> (act, grad_preact): [T, k], dtype of preact
std::tuple<at::Tensor, at::Tensor> activation_backward_cpu(const at::Tensor& preact, const std::optional<at::Tensor>& bias,
                                                           const at::Tensor& grad_act, c10::string_view activation) {
  check_activation_backward(preact, bias, grad_act);
  const int64_t tokens = preact.size(0), k = preact.size(1);
  const int kind = parse_activation(std::string(activation));
  const at::Tensor h = preact.contiguous(), g = grad_act.contiguous();
  at::Tensor act = at::empty_like(h), grad_h = at::empty_like(h);
  const auto pdtype = param_dtype(preact.scalar_type());
  const at::Tensor b = bias.has_value() ? bias->to(pdtype).contiguous() : at::zeros({k}, h.options().dtype(pdtype));
  if (tokens > 0 && k > 0) {
    const KernelTable& table = kernels();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "activation_backward_cpu", [&] {
      using T = typename Storage<scalar_t>::type;
      const T* hp = data<scalar_t>(h);
      const T* gp = data<scalar_t>(g);
      T* ap = data<scalar_t>(act);
      T* op = data<scalar_t>(grad_h);
      const Param<T>* bp = b.data_ptr<Param<T>>();
      at::parallel_for(0, tokens, std::max<int64_t>(1, 16384 / k), [&](int64_t r0, int64_t r1) {
        run_activation_backward(table, hp, gp, ap, op, r0, r1, k, bp, kind);
      });
    });
  }
  return {act, grad_h};
}

}  // namespace

TORCH_LIBRARY_IMPL(kprune, CPU, m) { m.impl("activation_backward", &activation_backward_cpu); }

}  // namespace cpu
}  // namespace kprune
