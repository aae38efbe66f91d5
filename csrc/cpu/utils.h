// Helpers shared by the CPU ATen bindings.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Half.h>

#include <string>
#include <utility>

#include "gemm.h"
#include "isa.h"
#include "kprune/checks.h"
#include "kprune/cpu_kernels.h"

namespace kprune {
namespace cpu {

// fp16 accumulates in fp32 (the generic, non-table path).
template <>
struct Cvt<c10::Half> {
  using acc = float;
  static KPRUNE_INLINE float load(c10::Half v) { return static_cast<float>(v); }
  static KPRUNE_INLINE c10::Half store(float v) { return c10::Half(v); }
};

// The storage type the raw kernels see for an ATen scalar type.
template <typename scalar_t>
struct Storage {
  using type = scalar_t;
};
template <>
struct Storage<c10::BFloat16> {
  using type = Bf16;
};

template <typename scalar_t>
typename Storage<scalar_t>::type* data(const at::Tensor& t) {
  return reinterpret_cast<typename Storage<scalar_t>::type*>(t.data_ptr<scalar_t>());
}

inline int parse_activation(const std::string& name) {
  if (name == "gelu") return math::kGelu;
  if (name == "gelu_tanh") return math::kGeluTanh;
  if (name == "relu") return math::kRelu;
  if (name == "silu") return math::kSilu;
  TORCH_CHECK_VALUE(false, "activation '", name, "' is not supported; expected one of gelu, gelu_tanh, relu, silu");
}

// True when index is 0, 1, ..., bound - 1 (every unit kept), so the weights can be used as they are.
inline bool is_identity_index(const at::Tensor& index, int64_t bound) {
  if (index.numel() != bound || !index.device().is_cpu()) return false;
  const at::Tensor c = index.contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  for (int64_t i = 0; i < bound; ++i) {
    if (p[i] != i) return false;
  }
  return true;
}

// w.index_select(dim, index) without the copy when every index is kept in order.
inline at::Tensor select_kept(const at::Tensor& w, int64_t dim, const at::Tensor& index) {
  return is_identity_index(index, w.size(dim)) ? w : w.index_select(dim, index);
}

// Splits [0, n) into about 2 chunks per thread; each chunk owns a row of `partial` ([chunks, k]).
// Bias/mask parameters reach the kernels as float, or double for float64 data.
inline at::ScalarType param_dtype(at::ScalarType data) { return data == at::kDouble ? at::kDouble : at::kFloat; }
template <typename T>
using Param = std::conditional_t<std::is_same_v<T, double>, double, float>;

inline int64_t num_chunks(int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>(n, 2 * at::get_num_threads()));
}

// act and grad with dense columns and equal strides (rows may be strided, e.g. a column slice):
// themselves when they already are, contiguous copies otherwise.
inline std::pair<at::Tensor, at::Tensor> dense_columns(const at::Tensor& act, const at::Tensor& grad) {
  if (act.stride(1) == 1 && grad.strides() == act.strides()) return {act, grad};
  return {act.contiguous(), grad.contiguous()};
}

// Column blocks of the per-column kernels (importance, group sums): at most kImportanceWidth wide, at
// least 2 blocks per thread when units allow. Block b covers [b * width, min((b + 1) * width, units)).
struct ColumnBlocks {
  int64_t width, count;
};
inline ColumnBlocks column_blocks(int64_t units) {
  const int64_t threads = at::get_num_threads();
  int64_t width = (units + 2 * threads - 1) / (2 * threads);
  width = std::min<int64_t>(kImportanceWidth, std::max<int64_t>(64, (width + 15) / 16 * 16));
  return {width, (units + width - 1) / width};
}

// Table kernels for float / bf16 (chosen instruction set); the generic templates otherwise.
inline void run_importance(const KernelTable& t, const float* a, const float* g, int64_t ld, const int64_t* o,
                           int64_t groups, int64_t u0, int64_t w, float* gsq, float* asq) {
  t.importance_f32(a, g, ld, o, groups, u0, w, gsq, asq);
}
inline void run_importance(const KernelTable& t, const Bf16* a, const Bf16* g, int64_t ld, const int64_t* o,
                           int64_t groups, int64_t u0, int64_t w, float* gsq, float* asq) {
  t.importance_bf16(a, g, ld, o, groups, u0, w, gsq, asq);
}
template <typename T>
void run_importance(const KernelTable&, const T* a, const T* g, int64_t ld, const int64_t* o, int64_t groups,
                    int64_t u0, int64_t w, float* gsq, float* asq) {
  importance_block<T>(a, g, ld, o, groups, u0, w, gsq, asq);
}

inline void run_group_sums(const KernelTable& t, const float* a, const float* g, int64_t ld, const int64_t* o,
                           const int64_t* sg, int64_t segments, int64_t u0, int64_t w, double* sums, int64_t ldg,
                           float* asq) {
  t.group_sums_f32(a, g, ld, o, sg, segments, u0, w, sums, ldg, asq);
}
inline void run_group_sums(const KernelTable& t, const Bf16* a, const Bf16* g, int64_t ld, const int64_t* o,
                           const int64_t* sg, int64_t segments, int64_t u0, int64_t w, double* sums, int64_t ldg,
                           float* asq) {
  t.group_sums_bf16(a, g, ld, o, sg, segments, u0, w, sums, ldg, asq);
}
template <typename T>
void run_group_sums(const KernelTable&, const T* a, const T* g, int64_t ld, const int64_t* o, const int64_t* sg,
                    int64_t segments, int64_t u0, int64_t w, double* sums, int64_t ldg, float* asq) {
  group_sums_block<T>(a, g, ld, o, sg, segments, u0, w, sums, ldg, asq);
}

inline void run_ffn_forward(const KernelTable& t, float* h, float* act, int64_t ld, int64_t r0, int64_t r1,
                            int64_t k, const float* bias, const float* mask, int kind) {
  t.ffn_forward_f32(h, ld, act, ld, r0, r1, k, bias, mask, kind);
}
inline void run_ffn_forward(const KernelTable& t, Bf16* h, Bf16* act, int64_t ld, int64_t r0, int64_t r1, int64_t k,
                            const float* bias, const float* mask, int kind) {
  t.ffn_forward_bf16(h, ld, act, ld, r0, r1, k, bias, mask, kind);
}
template <typename T, typename P>
void run_ffn_forward(const KernelTable&, T* h, T* act, int64_t ld, int64_t r0, int64_t r1, int64_t k,
                     const P* bias, const P* mask, int kind) {
  ffn_forward<T, P>(h, ld, act, ld, r0, r1, k, bias, mask, kind);
}

inline void run_ffn_backward(const KernelTable& t, float* gs, const float* h, const float* act, const float* ga,
                             int64_t ld, int64_t r0, int64_t r1, int64_t k, const float* bias, const float* mask,
                             int kind, float* gm) {
  t.ffn_backward_f32(gs, h, act, ga, ld, r0, r1, k, bias, mask, kind, gm);
}
inline void run_ffn_backward(const KernelTable& t, Bf16* gs, const Bf16* h, const Bf16* act, const Bf16* ga,
                             int64_t ld, int64_t r0, int64_t r1, int64_t k, const float* bias, const float* mask,
                             int kind, float* gm) {
  t.ffn_backward_bf16(gs, h, act, ga, ld, r0, r1, k, bias, mask, kind, gm);
}
template <typename T, typename P>
void run_ffn_backward(const KernelTable&, T* gs, const T* h, const T* act, const T* ga, int64_t ld, int64_t r0,
                      int64_t r1, int64_t k, const P* bias, const P* mask, int kind, typename Cvt<T>::acc* gm) {
  ffn_backward<T, P>(gs, h, act, ga, ld, r0, r1, k, bias, mask, kind, gm);
}

inline void run_activation_backward(const KernelTable& t, const float* h, const float* ga, float* act, float* gh,
                                    int64_t r0, int64_t r1, int64_t k, const float* bias, int kind) {
  t.activation_backward_f32(h, ga, act, gh, r0, r1, k, bias, kind);
}
inline void run_activation_backward(const KernelTable& t, const Bf16* h, const Bf16* ga, Bf16* act, Bf16* gh,
                                    int64_t r0, int64_t r1, int64_t k, const float* bias, int kind) {
  t.activation_backward_bf16(h, ga, act, gh, r0, r1, k, bias, kind);
}
template <typename T, typename P>
void run_activation_backward(const KernelTable&, const T* h, const T* ga, T* act, T* gh, int64_t r0, int64_t r1,
                             int64_t k, const P* bias, int kind) {
  activation_backward<T, P>(h, ga, act, gh, r0, r1, k, bias, kind);
}

}  // namespace cpu
}  // namespace kprune
