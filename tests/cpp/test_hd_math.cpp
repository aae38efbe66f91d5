// The shared host/device math (kprune/hd_math.h), compiled for the host.
#include <cmath>
#include <cstdint>
#include <vector>

#include "harness.h"
#include "kprune/hd_math.h"

using namespace kprune::math;

static void test_exp_erf() {
  for (double x = -80.0; x <= 80.0; x += 0.0137) {
    const float xf = float(x);
    KP_CHECK_NEAR(exp_f(xf) / std::exp(double(xf)), 1.0, 3e-7);
  }
  for (double x = -6.0; x <= 6.0; x += 0.001) KP_CHECK_NEAR(erf_f(float(x)), std::erf(double(float(x))), 5e-7);
  KP_CHECK(exp_f(-1000.0f) >= 0.0f && exp_f(-1000.0f) < 1e-37f);
  KP_CHECK(std::isfinite(exp_f(1000.0f)));
  KP_CHECK_NEAR(tanh_f(0.3f), std::tanh(0.3), 2e-7);
  KP_CHECK_NEAR(tanh_f(-40.0f), -1.0, 0.0);
}

static void test_activations() {
  for (int kind : {kGelu, kGeluTanh, kRelu, kSilu, kIdentity}) {
    for (double x = -12.0; x <= 12.0; x += 0.01) {
      KP_CHECK_NEAR(activation(float(x), kind), activation(double(float(x)), kind), 2e-6 * (1.0 + std::fabs(x)));
      if (kind == kRelu && std::fabs(x) < 1e-6) continue;
      const double h = 1e-6, fd = (activation(x + h, kind) - activation(x - h, kind)) / (2 * h);
      KP_CHECK_NEAR(activation_grad(x, kind), fd, 1e-6);
      KP_CHECK_NEAR(activation_grad(float(x), kind), activation_grad(double(float(x)), kind), 3e-6);
      float slope = 0.0f;  // f and f' together: f exactly as activation(), f' as the double oracle
      const float y = activation_with_grad(float(x), kind, slope);
      KP_CHECK(y == activation(float(x), kind));
      KP_CHECK_NEAR(slope, activation_grad(double(float(x)), kind), 3e-6);
    }
  }
  KP_CHECK_NEAR(activation(1.0, kGelu), 0.8413447460685429, 1e-15);
  KP_CHECK_NEAR(activation(1.0, kSilu), 0.7310585786300049, 1e-15);
}

static void test_bf16() {
  KP_CHECK(bf16_to_float(float_to_bf16(1.0f)) == 1.0f);
  KP_CHECK(bf16_to_float(float_to_bf16(-2.5f)) == -2.5f);
  // 1 + 2^-8 is halfway between two bf16 values: rounds to even (1.0); just above rounds up.
  KP_CHECK(bf16_to_float(float_to_bf16(1.0f + 1.0f / 256)) == 1.0f);
  KP_CHECK(bf16_to_float(float_to_bf16(1.0f + 1.5f / 256)) == 1.0f + 1.0f / 128);
  KP_CHECK(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));
  KP_CHECK(std::isinf(bf16_to_float(float_to_bf16(INFINITY))));
}

static void test_find_group() {
  const int64_t offsets[] = {2, 5, 5, 9, 12};  // groups [2,5) [5,5) [5,9) [9,12)
  KP_CHECK(find_group(offsets, 4, 2) == 0);
  KP_CHECK(find_group(offsets, 4, 4) == 0);
  KP_CHECK(find_group(offsets, 4, 5) == 2);  // skips the empty group
  KP_CHECK(find_group(offsets, 4, 8) == 2);
  KP_CHECK(find_group(offsets, 4, 11) == 3);
  KP_CHECK(find_group(offsets, 4, 12) == 4);
}

static void test_cholesky() {
  const int64_t n = 5, m = 3;
  std::vector<double> a(n * n), g(n * n), x(n * m), b(n * m);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) a[i * n + j] = std::sin(double(i * 7 + j * 3 + 1));
  for (int64_t i = 0; i < n; ++i)  // g = a a^T + I
    for (int64_t j = 0; j < n; ++j) {
      double s = i == j ? 1.0 : 0.0;
      for (int64_t p = 0; p < n; ++p) s += a[i * n + p] * a[j * n + p];
      g[i * n + j] = s;
    }
  for (int64_t i = 0; i < n * m; ++i) x[i] = std::cos(double(i));
  for (int64_t i = 0; i < n; ++i)  // b = g x
    for (int64_t c = 0; c < m; ++c) {
      double s = 0.0;
      for (int64_t p = 0; p < n; ++p) s += g[i * n + p] * x[p * m + c];
      b[i * m + c] = s;
    }
  std::vector<double> l = g;
  KP_CHECK(cholesky_lower<double>(l.data(), n, n));
  cholesky_solve_lower<double>(l.data(), n, n, b.data(), m, m);
  for (int64_t i = 0; i < n * m; ++i) KP_CHECK_NEAR(b[i], x[i], 1e-10);
  std::vector<double> indefinite = {1.0, 2.0, 2.0, 1.0};
  KP_CHECK(!cholesky_lower<double>(indefinite.data(), 2, 2));
  std::vector<double> nan_matrix = {NAN};
  KP_CHECK(!cholesky_lower<double>(nan_matrix.data(), 1, 1));
  KP_CHECK_NEAR(initial_damping(4.0, 1e-4), 4e-4, 1e-18);
  KP_CHECK_NEAR(initial_damping(0.0, 1e-4), 1e-4, 1e-18);
}

int main() {
  test_exp_erf();
  test_activations();
  test_bf16();
  test_find_group();
  test_cholesky();
  return KP_REPORT();
}
