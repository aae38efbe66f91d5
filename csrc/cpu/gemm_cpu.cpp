// kprune::cpu::gemm_nt: float32 CPU GEMMs through torch's oneDNN matmul (mkldnn::_linear_pointwise),
// found in the dispatcher at first use, on x86 CPUs other than Intel's; at::mm/at::addmm otherwise (see gemm.h).
#include "gemm.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/ops/_unsafe_view.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace kprune {
namespace cpu {
namespace {

const c10::OperatorHandle* onednn_op() {
  static const std::optional<c10::OperatorHandle> op =
      c10::Dispatcher::singleton().findOp({"mkldnn::_linear_pointwise", ""});
  return op.has_value() ? &*op : nullptr;
}

std::atomic<int> use_onednn{-1};  // -1: not chosen yet
// Smaller GEMMs stay on at::mm: oneDNN JIT-compiles a kernel per new shape (0.4-1 ms here), which a
// GEMM of fewer multiply-adds does not win back; pruned sublayers and tests make many such shapes.
std::atomic<int64_t> onednn_min_macs{int64_t(1) << 25};

bool genuine_intel() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(0, &eax, &ebx, &ecx, &edx) == 0) return false;
  char vendor[13];
  std::memcpy(vendor, &ebx, 4);
  std::memcpy(vendor + 4, &edx, 4);
  std::memcpy(vendor + 8, &ecx, 4);
  vendor[12] = '\0';
  return std::string(vendor) == "GenuineIntel";
#else
  return false;
#endif
}

bool x86() {
#if defined(__x86_64__) || defined(__i386__)
  return true;
#else
  return false;
#endif
}

}  // namespace

bool onednn_by_default() { return x86() && !genuine_intel(); }

namespace {

bool onednn_enabled() {
  int v = use_onednn.load(std::memory_order_relaxed);
  if (v < 0) {
    const char* env = std::getenv("KPRUNE_GEMM");
    const std::string choice = env == nullptr ? "auto" : std::string(env);
    const bool wanted = choice == "onednn" || (choice != "aten" && onednn_by_default());
    v = wanted && onednn_op() != nullptr ? 1 : 0;
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

namespace {
// bf16 GEMMs run on torch's oneDNN path, which JIT-compiles a kernel for every new shape (about 1 ms on
// the Xeon measured) and keeps 16 (kprune's cap, _loader.py); every compute batch has its own row count,
// so nearly every call compiled anew. Rows rounded up to a multiple of this leave a few shapes per pass.
constexpr int64_t kBf16RowQuantum = 64;

// oneDNN's matmul reads a row-major matrix or its transpose at full speed and any other layout (the transpose of
// a column slice, say) element by element: 76 s instead of 0.06 s for a [1536, 2048] x [2048, 768] product here
// (one Zen 4 core). Such operands are copied first, which costs a small part of one GEMM.
at::Tensor row_major_or_transposed(const at::Tensor& t) {
  return t.is_contiguous() || t.t().is_contiguous() ? t : t.contiguous();
}

// x w^T (+ bias) on rows padded with zeros to a multiple of kBf16RowQuantum; the result holds the first
// `rows` rows of the padded product in its storage (a tensor of its own, not a view).
at::Tensor padded_rows_gemm(const at::Tensor& flat, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  const int64_t rows = flat.size(0), k = flat.size(1), n = w.size(0);
  const int64_t padded = (rows + kBf16RowQuantum - 1) / kBf16RowQuantum * kBf16RowQuantum;
  at::Tensor xp = at::empty({padded, k}, flat.options());
  xp.narrow(0, 0, rows).copy_(flat);
  xp.narrow(0, rows, padded - rows).zero_();
  const at::Tensor full = bias.has_value() ? at::addmm(*bias, xp, w.t()) : at::mm(xp, w.t());
  return at::empty({0}, full.options()).set_(full.storage(), full.storage_offset(), {rows, n}, {n, 1});
}
}  // namespace

at::Tensor gemm_nt(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  const bool defined_bias = bias.has_value() && bias->defined();
  int64_t rows = 1;
  for (int64_t i = 0; i + 1 < x.dim(); ++i) rows *= x.size(i);
  const at::Tensor flat = x.dim() == 2 ? x : x.reshape({rows, x.size(-1)});
  const int64_t macs = rows * x.size(-1) * w.size(0);
  at::Tensor out;
  if (x.device().is_cpu() && x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16 &&
      (!defined_bias || bias->scalar_type() == at::kBFloat16) && rows % kBf16RowQuantum != 0 && macs > 0) {
    out = padded_rows_gemm(flat, w, defined_bias ? bias : std::nullopt);
  } else if (x.device().is_cpu() && x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat && macs > 0 &&
      macs >= onednn_min_macs.load(std::memory_order_relaxed) &&
      (!defined_bias || bias->scalar_type() == at::kFloat) && onednn_enabled()) {
    out = onednn_linear(row_major_or_transposed(flat), row_major_or_transposed(w), defined_bias ? bias : std::nullopt);
  } else {
    out = defined_bias ? at::addmm(*bias, flat, w.t()) : at::mm(flat, w.t());
  }
  if (x.dim() == 2) return out;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = w.size(0);
  return at::_unsafe_view(out, shape);  // not a view: callers may write into the result under autograd
}

std::string gemm_backend() { return onednn_enabled() ? "onednn" : "aten"; }

std::string set_gemm_backend(const std::string& name, int64_t min_macs) {
  TORCH_CHECK_VALUE(name == "onednn" || name == "aten" || name == "auto",
                    "gemm backend must be one of auto, onednn, aten; got '", name, "'");
  TORCH_CHECK_VALUE(min_macs >= -1, "min_macs must be >= 0 (or -1 to keep it); got ", min_macs);
  const bool wanted = name == "onednn" || (name == "auto" && onednn_by_default());
  use_onednn.store(wanted && onednn_op() != nullptr ? 1 : 0, std::memory_order_relaxed);
  if (min_macs >= 0) onednn_min_macs.store(min_macs, std::memory_order_relaxed);
  return gemm_backend();
}

int64_t gemm_min_macs() { return onednn_min_macs.load(std::memory_order_relaxed); }

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
