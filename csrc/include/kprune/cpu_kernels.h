// Raw-pointer CPU kernel bodies, templated on the storage type. No torch headers: these are
// instantiated once per instruction set (csrc/cpu/isa_kernels.cpp, target attributes) and once
// generically for the other dtypes, and unit-tested without libtorch (tests/cpp).
// Every function works on one slice of the work; the ATen bindings split the slices over threads.
#pragma once

#include <cstdint>

#include "kprune/hd_math.h"

#define KPRUNE_INLINE inline __attribute__((always_inline))

namespace kprune {
namespace cpu {

// bfloat16 as its raw bits (layout-compatible with c10::BFloat16).
using Bf16 = uint16_t;

// P (bias/mask parameters): float, or double for float64 data.
// Storage <-> accumulation conversions; other types (c10::Half) specialise this in their TU.
template <typename T>
struct Cvt {
  using acc = T;
  static KPRUNE_INLINE acc load(T v) { return v; }
  static KPRUNE_INLINE T store(acc v) { return v; }
};
template <>
struct Cvt<Bf16> {
  using acc = float;
  static KPRUNE_INLINE float load(Bf16 v) { return math::bf16_to_float(v); }
  static KPRUNE_INLINE Bf16 store(float v) { return math::float_to_bf16(v); }
};

constexpr int64_t kImportanceWidth = 512;  // units per column block (accumulators stay in L1)
constexpr int64_t kImportanceChunk = 256;  // tokens summed before folding into the running sums

// Rows [t0, t1) of act, grad: [tokens, ld], columns [u0, u0 + width): ag[j] = sum_t act*grad and
// aa[j] = sum_t act^2 in the accumulation type (t1 - t0 <= kImportanceChunk keeps the sums short).
template <typename T>
KPRUNE_INLINE void chunk_sums(const T* __restrict act, const T* __restrict grad, int64_t ld, int64_t t0, int64_t t1,
                              int64_t u0, int64_t width, typename Cvt<T>::acc* __restrict ag,
                              typename Cvt<T>::acc* __restrict aa) {
  using A = typename Cvt<T>::acc;
  for (int64_t j = 0; j < width; ++j) ag[j] = aa[j] = A(0);
  for (int64_t t = t0; t < t1; ++t) {
    const T* __restrict ar = act + t * ld + u0;
    const T* __restrict gr = grad + t * ld + u0;
    for (int64_t j = 0; j < width; ++j) {
      const A a = Cvt<T>::load(ar[j]);
      ag[j] += a * Cvt<T>::load(gr[j]);
      aa[j] += a * a;
    }
  }
}

// act, grad: [tokens, ld]; offsets: [groups + 1]; columns [u0, u0 + width), width <= kImportanceWidth.
// grad_sq[u] += sum_g (sum_{t in g} act*grad)^2 ; act_sq[u] += sum_t act^2 (t in [offsets[0], offsets[G])).
template <typename T>
KPRUNE_INLINE void importance_block(const T* __restrict act, const T* __restrict grad, int64_t ld,
                                    const int64_t* offsets, int64_t groups, int64_t u0, int64_t width,
                                    float* __restrict grad_sq, float* __restrict act_sq) {
  using A = typename Cvt<T>::acc;
  A group_sum[kImportanceWidth], chunk_ag[kImportanceWidth], chunk_aa[kImportanceWidth];
  A total_aa[kImportanceWidth], total_gsq[kImportanceWidth];
  for (int64_t j = 0; j < width; ++j) total_aa[j] = total_gsq[j] = A(0);
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t j = 0; j < width; ++j) group_sum[j] = A(0);
    for (int64_t t0 = offsets[g]; t0 < offsets[g + 1]; t0 += kImportanceChunk) {
      const int64_t t1 = t0 + kImportanceChunk < offsets[g + 1] ? t0 + kImportanceChunk : offsets[g + 1];
      chunk_sums<T>(act, grad, ld, t0, t1, u0, width, chunk_ag, chunk_aa);
      for (int64_t j = 0; j < width; ++j) {
        group_sum[j] += chunk_ag[j];
        total_aa[j] += chunk_aa[j];
      }
    }
    for (int64_t j = 0; j < width; ++j) total_gsq[j] += group_sum[j] * group_sum[j];
  }
  for (int64_t j = 0; j < width; ++j) {
    grad_sq[u0 + j] += float(total_gsq[j]);
    act_sq[u0 + j] += float(total_aa[j]);
  }
}

// Per-group sums of act*grad for groups whose segments (samples) are spread over many calls.
// act, grad: [tokens, ld]; offsets: [segments + 1]; segment_group: [segments], the group of each segment;
// group_sums: float64 [groups, ldg]; columns [u0, u0 + width), width <= kImportanceWidth.
// group_sums[segment_group[s], u] += sum_{t in s} act*grad, each segment's sum formed in float64 from
// sums of at most kImportanceChunk tokens in the accumulation type, segments added in order;
// act_sq[u] += sum_t act^2 (t in [offsets[0], offsets[S])).
template <typename T>
KPRUNE_INLINE void group_sums_block(const T* __restrict act, const T* __restrict grad, int64_t ld,
                                    const int64_t* offsets, const int64_t* segment_group, int64_t segments,
                                    int64_t u0, int64_t width, double* __restrict group_sums, int64_t ldg,
                                    float* __restrict act_sq) {
  using A = typename Cvt<T>::acc;
  A chunk_ag[kImportanceWidth], chunk_aa[kImportanceWidth], total_aa[kImportanceWidth];
  double segment_sum[kImportanceWidth];
  for (int64_t j = 0; j < width; ++j) total_aa[j] = A(0);
  for (int64_t s = 0; s < segments; ++s) {
    if (offsets[s] == offsets[s + 1]) continue;
    for (int64_t j = 0; j < width; ++j) segment_sum[j] = 0.0;
    for (int64_t t0 = offsets[s]; t0 < offsets[s + 1]; t0 += kImportanceChunk) {
      const int64_t t1 = t0 + kImportanceChunk < offsets[s + 1] ? t0 + kImportanceChunk : offsets[s + 1];
      chunk_sums<T>(act, grad, ld, t0, t1, u0, width, chunk_ag, chunk_aa);
      for (int64_t j = 0; j < width; ++j) {
        segment_sum[j] += double(chunk_ag[j]);
        total_aa[j] += chunk_aa[j];
      }
    }
    double* __restrict row = group_sums + segment_group[s] * ldg + u0;
    for (int64_t j = 0; j < width; ++j) row[j] += segment_sum[j];
  }
  for (int64_t j = 0; j < width; ++j) act_sq[u0 + j] += float(total_aa[j]);
}

// FFN forward epilogue on rows [r0, r1) of h: [rows, k] (ldh), the bare GEMM result x W_in[kept]^T.
// act[t, j] = f(h + bias[j]) (lda; bias never null: zeros when the layer has none); h becomes act * mask[j] (the output projection's input).
template <typename T, int Kind, typename P>
KPRUNE_INLINE void ffn_forward_rows(T* __restrict h, int64_t ldh, T* __restrict act, int64_t lda, int64_t r0,
                                    int64_t r1, int64_t k, const P* __restrict bias,
                                    const P* __restrict mask) {
  using A = typename Cvt<T>::acc;
  for (int64_t t = r0; t < r1; ++t) {
    T* __restrict hr = h + t * ldh;
    T* __restrict ar = act + t * lda;
    for (int64_t j = 0; j < k; ++j) {
      const A z = Cvt<T>::load(hr[j]) + A(bias[j]);
      const A y = math::activation(z, Kind);
      const T ys = Cvt<T>::store(y);
      ar[j] = ys;
      hr[j] = Cvt<T>::store(Cvt<T>::load(ys) * A(mask[j]));
    }
  }
}

// FFN backward epilogue on rows [r0, r1). gs: [rows, k] (ld) = grad_out W_out[:, kept], the
// gradient of the masked activations; h: recomputed x W_in[kept]^T (no bias); act: forward act;
// grad_act: gradient flowing into the act output (read only when HasGradAct). grad_mask_part[j] += sum_t gs*act;
// gs becomes the gradient of the pre-activation: (gs*mask + grad_act) * f'(h + bias).
template <typename T, int Kind, bool HasGradAct, typename P>
KPRUNE_INLINE void ffn_backward_rows(T* __restrict gs, const T* __restrict h, const T* __restrict act,
                                     const T* __restrict grad_act, int64_t ld, int64_t r0, int64_t r1, int64_t k,
                                     const P* __restrict bias, const P* __restrict mask,
                                     typename Cvt<T>::acc* __restrict grad_mask_part) {
  using A = typename Cvt<T>::acc;
  for (int64_t t = r0; t < r1; ++t) {
    T* __restrict gr = gs + t * ld;
    const T* __restrict hr = h + t * ld;
    const T* __restrict ar = act + t * ld;
    const T* __restrict gar = HasGradAct ? grad_act + t * ld : act;
    for (int64_t j = 0; j < k; ++j) {
      const A g = Cvt<T>::load(gr[j]);
      grad_mask_part[j] += g * Cvt<T>::load(ar[j]);
      const A up = HasGradAct ? g * A(mask[j]) + Cvt<T>::load(gar[j]) : g * A(mask[j]);
      const A z = Cvt<T>::load(hr[j]) + A(bias[j]);
      gr[j] = Cvt<T>::store(up * math::activation_grad(z, Kind));
    }
  }
}

// The FFN activation and its backward in one pass over rows [r0, r1) of contiguous [rows, k] data:
// act = f(h + bias), grad_h = grad_act * f'(h + bias). h: x W_in^T without bias.
template <typename T, int Kind, typename P>
KPRUNE_INLINE void activation_backward_rows(const T* __restrict h, const T* __restrict grad_act, T* __restrict act,
                                            T* __restrict grad_h, int64_t r0, int64_t r1, int64_t k,
                                            const P* __restrict bias) {
  using A = typename Cvt<T>::acc;
  for (int64_t t = r0; t < r1; ++t) {
    const int64_t row = t * k;
    for (int64_t j = 0; j < k; ++j) {
      A slope;
      const A y = math::activation_with_grad(A(Cvt<T>::load(h[row + j]) + A(bias[j])), Kind, slope);
      act[row + j] = Cvt<T>::store(y);
      grad_h[row + j] = Cvt<T>::store(Cvt<T>::load(grad_act[row + j]) * slope);
    }
  }
}

// Attention forward on rows [r0, r1): context: [rows, H * hs] (ldc); for the j-th kept head
// act[t, j*hs + i] = context[t, heads[j]*hs + i] and scaled = act * mask[j]; act, scaled: [rows, k*hs].
template <typename T, typename P>
KPRUNE_INLINE void attention_forward_rows(const T* __restrict context, int64_t ldc, const int64_t* heads, int64_t k,
                                          int64_t hs, const P* __restrict mask, T* __restrict act,
                                          T* __restrict scaled, int64_t r0, int64_t r1) {
  using A = typename Cvt<T>::acc;
  const int64_t width = k * hs;
  for (int64_t t = r0; t < r1; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const T* __restrict src = context + t * ldc + heads[j] * hs;
      T* __restrict a = act + t * width + j * hs;
      T* __restrict s = scaled + t * width + j * hs;
      const A m = A(mask[j]);
      for (int64_t i = 0; i < hs; ++i) {
        a[i] = src[i];
        s[i] = Cvt<T>::store(Cvt<T>::load(src[i]) * m);
      }
    }
  }
}

// Attention backward on rows [r0, r1): gs: [rows, k*hs] = grad_out W_out[:, kept cols];
// grad_context: [rows, H*hs], pruned heads left untouched (zero); grad_mask_part[j] += sum gs*act.
template <typename T, typename P>
KPRUNE_INLINE void attention_backward_rows(const T* __restrict gs, const T* __restrict act,
                                           const T* __restrict grad_act, const int64_t* heads, int64_t k, int64_t hs,
                                           const P* __restrict mask, T* __restrict grad_context, int64_t ldc,
                                           int64_t r0, int64_t r1, typename Cvt<T>::acc* __restrict grad_mask_part) {
  using A = typename Cvt<T>::acc;
  const int64_t width = k * hs;
  for (int64_t t = r0; t < r1; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const T* __restrict g = gs + t * width + j * hs;
      const T* __restrict a = act + t * width + j * hs;
      const T* __restrict ga = grad_act ? grad_act + t * width + j * hs : nullptr;
      T* __restrict dst = grad_context + t * ldc + heads[j] * hs;
      const A m = A(mask[j]);
      A dot = A(0);
      for (int64_t i = 0; i < hs; ++i) {
        const A gi = Cvt<T>::load(g[i]);
        dot += gi * Cvt<T>::load(a[i]);
        A v = gi * m;
        if (ga) v += Cvt<T>::load(ga[i]);
        dst[i] = Cvt<T>::store(v);
      }
      grad_mask_part[j] += dot;
    }
  }
}

// Activation-code dispatch of the two FFN epilogues (Kind becomes a compile-time constant).
template <typename T, typename P>
KPRUNE_INLINE void ffn_forward(T* h, int64_t ldh, T* act, int64_t lda, int64_t r0, int64_t r1, int64_t k,
                               const P* bias, const P* mask, int kind) {
  switch (kind) {
    case math::kGelu: return ffn_forward_rows<T, math::kGelu, P>(h, ldh, act, lda, r0, r1, k, bias, mask);
    case math::kGeluTanh: return ffn_forward_rows<T, math::kGeluTanh, P>(h, ldh, act, lda, r0, r1, k, bias, mask);
    case math::kRelu: return ffn_forward_rows<T, math::kRelu, P>(h, ldh, act, lda, r0, r1, k, bias, mask);
    case math::kSilu: return ffn_forward_rows<T, math::kSilu, P>(h, ldh, act, lda, r0, r1, k, bias, mask);
    default: return ffn_forward_rows<T, math::kIdentity, P>(h, ldh, act, lda, r0, r1, k, bias, mask);
  }
}

template <typename T, bool G, typename P>
KPRUNE_INLINE void ffn_backward_kind(T* gs, const T* h, const T* act, const T* ga, int64_t ld, int64_t r0, int64_t r1,
                                     int64_t k, const P* bias, const P* mask, int kind,
                                     typename Cvt<T>::acc* gm) {
  switch (kind) {
    case math::kGelu: return ffn_backward_rows<T, math::kGelu, G, P>(gs, h, act, ga, ld, r0, r1, k, bias, mask, gm);
    case math::kGeluTanh:
      return ffn_backward_rows<T, math::kGeluTanh, G, P>(gs, h, act, ga, ld, r0, r1, k, bias, mask, gm);
    case math::kRelu: return ffn_backward_rows<T, math::kRelu, G, P>(gs, h, act, ga, ld, r0, r1, k, bias, mask, gm);
    case math::kSilu: return ffn_backward_rows<T, math::kSilu, G, P>(gs, h, act, ga, ld, r0, r1, k, bias, mask, gm);
    default: return ffn_backward_rows<T, math::kIdentity, G, P>(gs, h, act, ga, ld, r0, r1, k, bias, mask, gm);
  }
}

template <typename T, typename P>
KPRUNE_INLINE void activation_backward(const T* h, const T* grad_act, T* act, T* grad_h, int64_t r0, int64_t r1,
                                       int64_t k, const P* bias, int kind) {
  switch (kind) {
    case math::kGelu: return activation_backward_rows<T, math::kGelu, P>(h, grad_act, act, grad_h, r0, r1, k, bias);
    case math::kGeluTanh:
      return activation_backward_rows<T, math::kGeluTanh, P>(h, grad_act, act, grad_h, r0, r1, k, bias);
    case math::kRelu: return activation_backward_rows<T, math::kRelu, P>(h, grad_act, act, grad_h, r0, r1, k, bias);
    case math::kSilu: return activation_backward_rows<T, math::kSilu, P>(h, grad_act, act, grad_h, r0, r1, k, bias);
    default: return activation_backward_rows<T, math::kIdentity, P>(h, grad_act, act, grad_h, r0, r1, k, bias);
  }
}

// grad_act may be null.
template <typename T, typename P>
KPRUNE_INLINE void ffn_backward(T* gs, const T* h, const T* act, const T* grad_act, int64_t ld, int64_t r0,
                                int64_t r1, int64_t k, const P* bias, const P* mask, int kind,
                                typename Cvt<T>::acc* grad_mask_part) {
  if (grad_act)
    return ffn_backward_kind<T, true, P>(gs, h, act, grad_act, ld, r0, r1, k, bias, mask, kind, grad_mask_part);
  return ffn_backward_kind<T, false, P>(gs, h, act, grad_act, ld, r0, r1, k, bias, mask, kind, grad_mask_part);
}

}  // namespace cpu
}  // namespace kprune
