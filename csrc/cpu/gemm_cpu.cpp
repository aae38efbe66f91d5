// kprune::cpu::gemm_nt: float32 CPU GEMMs through torch's oneDNN matmul (mkldnn::_linear_pointwise),
// found in the dispatcher at first use; at::mm/at::addmm otherwise (see gemm.h).
#include "gemm.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <vector>

namespace kprune {
namespace cpu {
namespace {

const c10::OperatorHandle* onednn_op() {
  static const std::optional<c10::OperatorHandle> op =
      c10::Dispatcher::singleton().findOp({"mkldnn::_linear_pointwise", ""});
  return op.has_value() ? &*op : nullptr;
}

std::atomic<int> use_onednn{-1};  // -1: not chosen yet

bool onednn_enabled() {
  int v = use_onednn.load(std::memory_order_relaxed);
  if (v < 0) {
    const char* env = std::getenv("KPRUNE_GEMM");
    v = (env == nullptr || std::string(env) != "aten") && onednn_op() != nullptr ? 1 : 0;
    use_onednn.store(v, std::memory_order_relaxed);
  }
  return v == 1;
}

at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  torch::jit::Stack stack;
  stack.reserve(6);
  stack.emplace_back(x);
  stack.emplace_back(w);
  stack.emplace_back(bias.has_value() ? c10::IValue(*bias) : c10::IValue());
  stack.emplace_back(std::string("none"));
  stack.emplace_back(c10::List<std::optional<at::Scalar>>());
  stack.emplace_back(c10::IValue());
  onednn_op()->callBoxed(&stack);
  return stack[0].toTensor();
}

}  // namespace

at::Tensor gemm_nt(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  const bool defined_bias = bias.has_value() && bias->defined();
  int64_t rows = 1;
  for (int64_t i = 0; i + 1 < x.dim(); ++i) rows *= x.size(i);
  if (x.device().is_cpu() && x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat && rows > 0 &&
      x.size(-1) > 0 && w.size(0) > 0 && (!defined_bias || bias->scalar_type() == at::kFloat) && onednn_enabled()) {
    return onednn_linear(x, w, defined_bias ? bias : std::nullopt);
  }
  const at::Tensor flat = x.reshape({rows, x.size(-1)});
  at::Tensor out = defined_bias ? at::addmm(*bias, flat, w.t()) : at::mm(flat, w.t());
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = w.size(0);
  return out.view(shape);
}

std::string gemm_backend() { return onednn_enabled() ? "onednn" : "aten"; }

std::string set_gemm_backend(const std::string& name) {
  TORCH_CHECK_VALUE(name == "onednn" || name == "aten", "gemm backend must be one of onednn, aten; got '", name, "'");
  use_onednn.store(name == "onednn" && onednn_op() != nullptr ? 1 : 0, std::memory_order_relaxed);
  return gemm_backend();
}

namespace {
at::Tensor linear_op(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(x.dim() >= 1 && w.dim() == 2 && w.size(1) == x.size(-1), "linear: x [..., k] and w [n, k] expected, got ",
                    x.sizes(), " and ", w.sizes());
  TORCH_CHECK_VALUE(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == w.size(0)), "linear: bias must be [",
                    w.size(0), "]");
  return gemm_nt(x, w, bias);
}
}  // namespace

TORCH_LIBRARY_IMPL(kprune, CPU, m) { m.impl("linear", &linear_op); }

}  // namespace cpu
}  // namespace kprune
