// Run-time choice of the CPU instruction set for the hot kernels. No torch headers.
// The table entries are the kernels of csrc/include/kprune/cpu_kernels.h compiled with target
// attributes (isa_kernels.cpp); generic entries run everywhere.
#pragma once

#include <cstdint>

#include "kprune/attention_kernels.h"
#include "kprune/cpu_kernels.h"

namespace kprune {
namespace cpu {

enum class Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

struct KernelTable {
  // act, grad: [tokens, ld]; columns [u0, u0 + width)
  void (*importance_f32)(const float*, const float*, int64_t ld, const int64_t* offsets, int64_t groups,
                         int64_t u0, int64_t width, float* grad_sq, float* act_sq);
  void (*importance_bf16)(const Bf16*, const Bf16*, int64_t ld, const int64_t* offsets, int64_t groups,
                          int64_t u0, int64_t width, float* grad_sq, float* act_sq);
  // act, grad: [tokens, ld]; offsets: [segments + 1]; segment_group: [segments]; group_sums: [groups, ldg]
  void (*group_sums_f32)(const float*, const float*, int64_t ld, const int64_t* offsets,
                         const int64_t* segment_group, int64_t segments, int64_t u0, int64_t width,
                         double* group_sums, int64_t ldg, float* act_sq);
  void (*group_sums_bf16)(const Bf16*, const Bf16*, int64_t ld, const int64_t* offsets,
                          const int64_t* segment_group, int64_t segments, int64_t u0, int64_t width,
                          double* group_sums, int64_t ldg, float* act_sq);
  // h: [rows, k] (ldh) -> scaled; act: [rows, k] (lda)
  void (*ffn_forward_f32)(float* h, int64_t ldh, float* act, int64_t lda, int64_t r0, int64_t r1, int64_t k,
                          const float* bias, const float* mask, int kind);
  void (*ffn_forward_bf16)(Bf16* h, int64_t ldh, Bf16* act, int64_t lda, int64_t r0, int64_t r1, int64_t k,
                           const float* bias, const float* mask, int kind);
  // gs, h, act, grad_act: [rows, k] (ld)
  void (*ffn_backward_f32)(float* gs, const float* h, const float* act, const float* grad_act, int64_t ld,
                           int64_t r0, int64_t r1, int64_t k, const float* bias, const float* mask, int kind,
                           float* grad_mask_part);
  void (*ffn_backward_bf16)(Bf16* gs, const Bf16* h, const Bf16* act, const Bf16* grad_act, int64_t ld,
                            int64_t r0, int64_t r1, int64_t k, const float* bias, const float* mask, int kind,
                            float* grad_mask_part);
  // h, grad_act, act, grad_h: contiguous [rows, k]
  void (*activation_backward_f32)(const float* h, const float* grad_act, float* act, float* grad_h, int64_t r0,
                                  int64_t r1, int64_t k, const float* bias, int kind);
  void (*activation_backward_bf16)(const Bf16* h, const Bf16* grad_act, Bf16* act, Bf16* grad_h, int64_t r0,
                                   int64_t r1, int64_t k, const float* bias, int kind);
  // l: [n, n] lower; x: [n, m] (ldx), solved in place
  void (*cholesky_solve_f64)(const double* l, int64_t n, double* x, int64_t m, int64_t ldx);
  // one (sequence, head) of attention over its n real keys (kprune/attention_kernels.h)
  void (*attention_forward_f32)(const float* q, int64_t ldq, const float* k, const float* v, int64_t ldk, int64_t rows,
                                int64_t n, int64_t d, float scale, float* out, int64_t ldo, float* lse, float* scratch);
  void (*attention_backward_f32)(const float* q, int64_t ldq, const float* k, const float* v, int64_t ldk,
                                 const float* out, const float* grad_out, int64_t ldo, const float* lse, int64_t rows,
                                 int64_t n, int64_t d, float scale, float* dq, int64_t ldq_out, float* dk, float* dv,
                                 int64_t ld_kv_out, float* scratch);
};

// Best instruction set this CPU supports, capped by KPRUNE_CPU_CAPABILITY (generic|avx2|avx512).
Isa detected_isa();
Isa active_isa();
const char* isa_name(Isa isa);
// Forces an instruction set (tests, benchmarks); an unsupported request falls back to the best
// supported one below it. Returns the one now active.
Isa set_isa(Isa requested);
const KernelTable& kernels();
const KernelTable& kernels_for(Isa isa);

}  // namespace cpu
}  // namespace kprune
