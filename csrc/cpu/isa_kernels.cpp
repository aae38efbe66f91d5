// The kernel table, one instantiation per instruction set. Target attributes (not per-file
// flags) keep every inline function outside these wrappers compiled for the baseline ISA, so no
// AVX code can leak into other translation units. No torch headers here.
#include <cstdlib>
#include <cstring>

#include "isa.h"

namespace kprune {
namespace cpu {
namespace {

#define KPRUNE_DEFINE_KERNELS(SUFFIX, ATTR)                                                                   \
  template <typename T>                                                                                       \
  ATTR void importance_##SUFFIX(const T* act, const T* grad, int64_t ld, const int64_t* offsets,             \
                                int64_t groups, int64_t u0, int64_t width, float* gsq, float* asq) {          \
    importance_block<T>(act, grad, ld, offsets, groups, u0, width, gsq, asq);                               \
  }                                                                                                           \
  template <typename T>                                                                                       \
  ATTR void group_sums_##SUFFIX(const T* act, const T* grad, int64_t ld, const int64_t* offsets,             \
                                const int64_t* segment_group, int64_t segments, int64_t u0, int64_t width,    \
                                double* sums, int64_t ldg, float* asq) {                                      \
    group_sums_block<T>(act, grad, ld, offsets, segment_group, segments, u0, width, sums, ldg, asq);          \
  }                                                                                                           \
  template <typename T>                                                                                       \
  ATTR void ffn_forward_##SUFFIX(T* h, int64_t ldh, T* act, int64_t lda, int64_t r0, int64_t r1, int64_t k,   \
                                 const float* bias, const float* mask, int kind) {                            \
    ffn_forward<T, float>(h, ldh, act, lda, r0, r1, k, bias, mask, kind);                                          \
  }                                                                                                           \
  template <typename T>                                                                                       \
  ATTR void ffn_backward_##SUFFIX(T* gs, const T* h, const T* act, const T* ga, int64_t ld, int64_t r0,       \
                                  int64_t r1, int64_t k, const float* bias, const float* mask, int kind,      \
                                  float* gm) {                                                                \
    ffn_backward<T, float>(gs, h, act, ga, ld, r0, r1, k, bias, mask, kind, gm);                                   \
  }                                                                                                           \
  template <typename T>                                                                                       \
  ATTR void activation_backward_##SUFFIX(const T* h, const T* ga, T* act, T* gh, int64_t r0, int64_t r1,      \
                                         int64_t k, const float* bias, int kind) {                            \
    activation_backward<T, float>(h, ga, act, gh, r0, r1, k, bias, kind);                                     \
  }                                                                                                           \
  ATTR void cholesky_solve_##SUFFIX(const double* l, int64_t n, double* x, int64_t m, int64_t ldx) {          \
    math::cholesky_solve_lower<double>(l, n, n, x, m, ldx);                                                   \
  }                                                                                                           \
  ATTR void attention_forward_##SUFFIX(const float* q, int64_t ldq, const float* k, const float* v, int64_t ldk, \
                                       int64_t rows, int64_t n, int64_t d, float scale, float* out, int64_t ldo,  \
                                       float* lse, float* scratch) {                                          \
    attention_forward_any(q, ldq, k, v, ldk, rows, n, d, scale, out, ldo, lse, scratch);                      \
  }                                                                                                           \
  ATTR void attention_backward_##SUFFIX(const float* q, int64_t ldq, const float* k, const float* v, int64_t ldk, \
                                        const float* out, const float* grad_out, int64_t ldo, const float* lse,  \
                                        int64_t rows, int64_t n, int64_t d, float scale, float* dq,              \
                                        int64_t ldq_out, float* dk, float* dv, int64_t ld_kv_out,               \
                                        float* scratch) {                                                     \
    attention_backward_any(q, ldq, k, v, ldk, out, grad_out, ldo, lse, rows, n, d, scale, dq, ldq_out, dk, dv,   \
                           ld_kv_out, scratch);                                                               \
  }                                                                                                           \
  const KernelTable table_##SUFFIX = {                                                                        \
      importance_##SUFFIX<float>,  importance_##SUFFIX<Bf16>,    group_sums_##SUFFIX<float>,                  \
      group_sums_##SUFFIX<Bf16>,   ffn_forward_##SUFFIX<float>,                                               \
      ffn_forward_##SUFFIX<Bf16>,  ffn_backward_##SUFFIX<float>, ffn_backward_##SUFFIX<Bf16>,                 \
      activation_backward_##SUFFIX<float>, activation_backward_##SUFFIX<Bf16>,                                \
      cholesky_solve_##SUFFIX,     attention_forward_##SUFFIX,   attention_backward_##SUFFIX,                  \
  };

KPRUNE_DEFINE_KERNELS(generic, )
#if defined(__x86_64__) && defined(__GNUC__)
#define KPRUNE_HAS_X86_VARIANTS 1
KPRUNE_DEFINE_KERNELS(avx2, __attribute__((target("avx2,fma,f16c"))))
KPRUNE_DEFINE_KERNELS(avx512, __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))))
#endif

bool cpu_supports(Isa isa) {
#if defined(KPRUNE_HAS_X86_VARIANTS)
  __builtin_cpu_init();
  if (isa == Isa::kAvx512)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (isa == Isa::kAvx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return isa == Isa::kGeneric;
}

Isa best_supported_at_most(Isa cap) {
  for (int i = static_cast<int>(cap); i > 0; --i)
    if (cpu_supports(static_cast<Isa>(i))) return static_cast<Isa>(i);
  return Isa::kGeneric;
}

Isa& current() {
  static Isa isa = detected_isa();
  return isa;
}

}  // namespace

Isa detected_isa() {
  Isa cap = Isa::kAvx512;
  if (const char* env = std::getenv("KPRUNE_CPU_CAPABILITY")) {
    if (!std::strcmp(env, "generic") || !std::strcmp(env, "default")) cap = Isa::kGeneric;
    else if (!std::strcmp(env, "avx2")) cap = Isa::kAvx2;
  }
  return best_supported_at_most(cap);
}

Isa active_isa() { return current(); }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "generic";
  }
}

Isa set_isa(Isa requested) { return current() = best_supported_at_most(requested); }

const KernelTable& kernels_for(Isa isa) {
#if defined(KPRUNE_HAS_X86_VARIANTS)
  if (isa == Isa::kAvx512) return table_avx512;
  if (isa == Isa::kAvx2) return table_avx2;
#endif
  return table_generic;
}

const KernelTable& kernels() { return kernels_for(current()); }

}  // namespace cpu
}  // namespace kprune
