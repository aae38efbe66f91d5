// Math shared by the CPU kernels, the CUDA kernels and the C++ tests. No torch headers: this file
// compiles with g++ and nvcc alone. Float versions are branchless (they vectorise on the CPU and
// do not diverge on the GPU); double versions call libm for gradcheck-grade accuracy.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define KPRUNE_HD __host__ __device__ __forceinline__
#else
#define KPRUNE_HD inline __attribute__((always_inline))
#endif

namespace kprune {
namespace math {

// Activation codes shared by the schema string parser, the CPU and the CUDA kernels.
enum Activation : int { kGelu = 0, kGeluTanh = 1, kRelu = 2, kSilu = 3, kIdentity = 4 };

KPRUNE_HD float bits_to_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
#endif
}

KPRUNE_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
#endif
}

// bfloat16 stored as its 16 raw bits.
KPRUNE_HD float bf16_to_float(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }

// Round to nearest even; NaN stays NaN (quiet).
KPRUNE_HD uint16_t float_to_bf16(float f) {
  uint32_t bits = float_to_bits(f);
  uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  return (f != f) ? uint16_t(0x7fc0u) : uint16_t(rounded);
}

// exp(x) for float, |rel err| < 2e-7 on [-87, 88]; clamps outside (never inf/denormal).
KPRUNE_HD float exp_f(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  float n = (x * 1.44269504088896341f + magic) - magic;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.0f;
  int32_t e = int32_t(n) + 127;
  return y * bits_to_float(uint32_t(e) << 23);
}

// erf(x) for float, |abs err| < 5e-7 (Abramowitz-Stegun 7.1.26 with exp_f).
KPRUNE_HD float erf_f(float x) {
  float ax = x < 0.0f ? -x : x;
  float t = 1.0f / (1.0f + 0.3275911f * ax);
  float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  float y = 1.0f - poly * exp_f(-ax * ax);
  return x < 0.0f ? -y : y;
}

KPRUNE_HD float tanh_f(float x) { return 1.0f - 2.0f / (1.0f + exp_f(2.0f * x)); }

KPRUNE_HD float sigmoid_f(float x) { return 1.0f / (1.0f + exp_f(-x)); }

constexpr float kSqrtHalf = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;
constexpr float kSqrt2OverPi = 0.79788456080286536f;
constexpr float kTanhCubic = 0.044715f;

// Forward activations (float).
KPRUNE_HD float activation(float x, int kind) {
  switch (kind) {
    case kGelu: return 0.5f * x * (1.0f + erf_f(x * kSqrtHalf));
    case kGeluTanh: return 0.5f * x * (1.0f + tanh_f(kSqrt2OverPi * (x + kTanhCubic * x * x * x)));
    case kRelu: return x > 0.0f ? x : 0.0f;
    case kSilu: return x * sigmoid_f(x);
    default: return x;
  }
}

// d activation / dx (float).
KPRUNE_HD float activation_grad(float x, int kind) {
  switch (kind) {
    case kGelu: return 0.5f * (1.0f + erf_f(x * kSqrtHalf)) + x * kInvSqrt2Pi * exp_f(-0.5f * x * x);
    case kGeluTanh: {
      float t = tanh_f(kSqrt2OverPi * (x + kTanhCubic * x * x * x));
      return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * kTanhCubic * x * x);
    }
    case kRelu: return x > 0.0f ? 1.0f : 0.0f;
    case kSilu: {
      float s = sigmoid_f(x);
      return s * (1.0f + x * (1.0f - s));
    }
    default: return 1.0f;
  }
}

// f(x), with f'(x) in grad (float). For GELU one exp serves both the erf and the normal density
// (erf_f's own exp(-x^2/2)), so f is bit-identical to activation() and f' costs no second exp.
KPRUNE_HD float activation_with_grad(float x, int kind, float& grad) {
  if (kind == kGelu) {
    const float z = x * kSqrtHalf;
    const float az = z < 0.0f ? -z : z;
    const float t = 1.0f / (1.0f + 0.3275911f * az);
    const float poly =
        t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
    const float density = exp_f(-az * az);  // exp(-x^2 / 2)
    const float erf_abs = 1.0f - poly * density;
    const float cdf2 = 1.0f + (z < 0.0f ? -erf_abs : erf_abs);
    grad = 0.5f * cdf2 + x * kInvSqrt2Pi * density;
    return 0.5f * x * cdf2;
  }
  grad = activation_grad(x, kind);
  return activation(x, kind);
}

// Double versions (libm / CUDA math): used for float64 inputs and as the test oracle.
KPRUNE_HD double activation(double x, int kind) {
  switch (kind) {
    case kGelu: return 0.5 * x * (1.0 + erf(x * 0.70710678118654752));
    case kGeluTanh: return 0.5 * x * (1.0 + tanh(0.79788456080286536 * (x + 0.044715 * x * x * x)));
    case kRelu: return x > 0.0 ? x : 0.0;
    case kSilu: return x / (1.0 + exp(-x));
    default: return x;
  }
}

KPRUNE_HD double activation_grad(double x, int kind) {
  switch (kind) {
    case kGelu: return 0.5 * (1.0 + erf(x * 0.70710678118654752)) + x * 0.39894228040143268 * exp(-0.5 * x * x);
    case kGeluTanh: {
      double t = tanh(0.79788456080286536 * (x + 0.044715 * x * x * x));
      return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.79788456080286536 * (1.0 + 3.0 * 0.044715 * x * x);
    }
    case kRelu: return x > 0.0 ? 1.0 : 0.0;
    case kSilu: {
      double s = 1.0 / (1.0 + exp(-x));
      return s * (1.0 + x * (1.0 - s));
    }
    default: return 1.0;
  }
}

KPRUNE_HD double activation_with_grad(double x, int kind, double& grad) {
  grad = activation_grad(x, kind);
  return activation(x, kind);
}

// offsets: [groups + 1] non-decreasing. Returns g with offsets[g] <= t < offsets[g + 1]
// (the last such g for empty groups), or groups when t >= offsets[groups].
KPRUNE_HD int64_t find_group(const int64_t* offsets, int64_t groups, int64_t t) {
  int64_t lo = 0, hi = groups;  // invariant: offsets[lo] <= t (when t >= offsets[0])
  while (lo < hi) {
    int64_t mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= t) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// First damping of a system: damping * mean(diag) (or damping when the mean is not positive).
KPRUNE_HD double initial_damping(double diag_mean, double damping) {
  return (diag_mean > 0.0 ? diag_mean : 1.0) * damping;
}

// In-place lower Cholesky of a: [n, n] row-major (lda), upper triangle untouched.
// Returns false on a non-positive or non-finite pivot.
template <typename T>
KPRUNE_HD bool cholesky_lower(T* a, int64_t n, int64_t lda) {
  for (int64_t j = 0; j < n; ++j) {
    T d = a[j * lda + j];
    for (int64_t p = 0; p < j; ++p) d -= a[j * lda + p] * a[j * lda + p];
    if (!(d > T(0)) || !(d < T(1e300))) return false;
    T ljj = sqrt(d);
    a[j * lda + j] = ljj;
    T inv = T(1) / ljj;
    for (int64_t i = j + 1; i < n; ++i) {
      T s = a[i * lda + j];
      const T* ri = a + i * lda;
      const T* rj = a + j * lda;
      for (int64_t p = 0; p < j; ++p) s -= ri[p] * rj[p];
      a[i * lda + j] = s * inv;
    }
  }
  return true;
}

// Solve L L^T x = b in place. l: [n, n] lower (ldl); x: [n, m] row-major (ldx).
template <typename T>
KPRUNE_HD void cholesky_solve_lower(const T* l, int64_t n, int64_t ldl, T* x, int64_t m, int64_t ldx) {
  for (int64_t i = 0; i < n; ++i) {  // L y = b
    T* xi = x + i * ldx;
    for (int64_t j = 0; j < i; ++j) {
      const T lij = l[i * ldl + j];
      const T* xj = x + j * ldx;
      for (int64_t c = 0; c < m; ++c) xi[c] -= lij * xj[c];
    }
    const T inv = T(1) / l[i * ldl + i];
    for (int64_t c = 0; c < m; ++c) xi[c] *= inv;
  }
  for (int64_t i = n - 1; i >= 0; --i) {  // L^T x = y
    T* xi = x + i * ldx;
    for (int64_t j = i + 1; j < n; ++j) {
      const T lji = l[j * ldl + i];
      const T* xj = x + j * ldx;
      for (int64_t c = 0; c < m; ++c) xi[c] -= lji * xj[c];
    }
    const T inv = T(1) / l[i * ldl + i];
    for (int64_t c = 0; c < m; ++c) xi[c] *= inv;
  }
}

}  // namespace math
}  // namespace kprune
