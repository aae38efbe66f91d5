// The raw CPU kernels of every instruction set this machine supports, against naive float64 loops.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cpu/isa.h"
#include "harness.h"

using namespace kprune;
using namespace kprune::cpu;

static std::vector<float> pseudo_random(int64_t n, int seed) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = float(std::sin(0.7 * double(i) + seed) * 1.5);
  return v;
}

static void test_importance(const KernelTable& t) {
  const int64_t tokens = 300, units = 530, ld = 530;
  const std::vector<int64_t> offsets = {3, 100, 100, 290};
  const auto act = pseudo_random(tokens * units, 1), grad = pseudo_random(tokens * units, 2);
  std::vector<double> want_g(units, 0.0), want_a(units, 0.0);
  for (size_t g = 0; g + 1 < offsets.size(); ++g)
    for (int64_t u = 0; u < units; ++u) {
      double s = 0.0;
      for (int64_t r = offsets[g]; r < offsets[g + 1]; ++r) s += double(act[r * ld + u]) * grad[r * ld + u];
      want_g[u] += s * s;
    }
  for (int64_t r = offsets.front(); r < offsets.back(); ++r)
    for (int64_t u = 0; u < units; ++u) want_a[u] += double(act[r * ld + u]) * act[r * ld + u];
  std::vector<float> got_g(units, 0.0f), got_a(units, 0.0f);
  for (int64_t u0 = 0; u0 < units; u0 += 200)  // column blocks, as the binding splits them
    t.importance_f32(act.data(), grad.data(), ld, offsets.data(), 3, u0, std::min<int64_t>(200, units - u0),
                     got_g.data(), got_a.data());
  for (int64_t u = 0; u < units; ++u) {
    KP_CHECK_NEAR(got_g[u], want_g[u], 1e-5 * (1.0 + want_g[u]));
    KP_CHECK_NEAR(got_a[u], want_a[u], 1e-5 * (1.0 + want_a[u]));
  }
  std::vector<Bf16> act16(act.size()), grad16(act.size());
  for (size_t i = 0; i < act.size(); ++i) {
    act16[i] = math::float_to_bf16(act[i]);
    grad16[i] = math::float_to_bf16(grad[i]);
  }
  std::vector<float> got16_g(units, 0.0f), got16_a(units, 0.0f);
  for (int64_t u0 = 0; u0 < units; u0 += kImportanceWidth)
    t.importance_bf16(act16.data(), grad16.data(), ld, offsets.data(), 3, u0,
                      std::min<int64_t>(kImportanceWidth, units - u0), got16_g.data(), got16_a.data());
  for (int64_t u = 0; u < units; ++u) KP_CHECK_NEAR(got16_a[u], want_a[u], 2e-2 * (1.0 + want_a[u]));
}

// Segments (samples) of one call in logical groups: group 1 gets segments 0 and 2, group 0 is untouched.
static void test_group_sums(const KernelTable& t) {
  const int64_t tokens = 700, units = 530, ld = 530, groups = 3, ldg = 540;  // ldg > units: strided rows
  const std::vector<int64_t> offsets = {3, 100, 100, 400, 690}, segment_group = {1, 2, 1, 2};
  const auto act = pseudo_random(tokens * units, 11), grad = pseudo_random(tokens * units, 12);
  std::vector<double> want_s(groups * ldg, 0.5), want_a(units, 0.0);
  for (size_t s = 0; s + 1 < offsets.size(); ++s)
    for (int64_t r = offsets[s]; r < offsets[s + 1]; ++r)
      for (int64_t u = 0; u < units; ++u) {
        want_s[segment_group[s] * ldg + u] += double(act[r * ld + u]) * grad[r * ld + u];
        want_a[u] += double(act[r * ld + u]) * act[r * ld + u];
      }
  std::vector<double> got_s(groups * ldg, 0.5);
  std::vector<float> got_a(units, 0.0f);
  for (int64_t u0 = 0; u0 < units; u0 += 200)  // column blocks, as the binding splits them
    t.group_sums_f32(act.data(), grad.data(), ld, offsets.data(), segment_group.data(), 4, u0,
                     std::min<int64_t>(200, units - u0), got_s.data(), ldg, got_a.data());
  for (int64_t i = 0; i < groups * ldg; ++i) KP_CHECK_NEAR(got_s[i], want_s[i], 1e-5 * (1.0 + std::fabs(want_s[i])));
  for (int64_t u = 0; u < units; ++u) KP_CHECK_NEAR(got_a[u], want_a[u], 1e-5 * (1.0 + want_a[u]));
  std::vector<Bf16> act16(act.size()), grad16(act.size());
  for (size_t i = 0; i < act.size(); ++i) {
    act16[i] = math::float_to_bf16(act[i]);
    grad16[i] = math::float_to_bf16(grad[i]);
  }
  std::vector<double> want16_s(groups * ldg, 0.0), got16_s(groups * ldg, 0.0);
  for (size_t s = 0; s + 1 < offsets.size(); ++s)
    for (int64_t r = offsets[s]; r < offsets[s + 1]; ++r)
      for (int64_t u = 0; u < units; ++u)
        want16_s[segment_group[s] * ldg + u] +=
            double(math::bf16_to_float(act16[r * ld + u])) * math::bf16_to_float(grad16[r * ld + u]);
  std::vector<float> got16_a(units, 0.0f);
  for (int64_t u0 = 0; u0 < units; u0 += kImportanceWidth)
    t.group_sums_bf16(act16.data(), grad16.data(), ld, offsets.data(), segment_group.data(), 4, u0,
                      std::min<int64_t>(kImportanceWidth, units - u0), got16_s.data(), ldg, got16_a.data());
  for (int64_t i = 0; i < groups * ldg; ++i)
    KP_CHECK_NEAR(got16_s[i], want16_s[i], 1e-5 * (1.0 + std::fabs(want16_s[i])));
  for (int64_t u = 0; u < units; ++u) KP_CHECK_NEAR(got16_a[u], want_a[u], 2e-2 * (1.0 + want_a[u]));
}

static void test_ffn(const KernelTable& t) {
  const int64_t rows = 37, k = 45;
  const auto h0 = pseudo_random(rows * k, 3), bias = pseudo_random(k, 4), mask = pseudo_random(k, 5);
  const auto gs0 = pseudo_random(rows * k, 6), grad_act = pseudo_random(rows * k, 7);
  for (int kind : {math::kGelu, math::kGeluTanh, math::kRelu, math::kSilu}) {
    std::vector<float> h = h0, act(rows * k);
    t.ffn_forward_f32(h.data(), k, act.data(), k, 0, rows, k, bias.data(), mask.data(), kind);
    std::vector<float> gs = gs0, gm(k, 0.0f);
    t.ffn_backward_f32(gs.data(), h0.data(), act.data(), grad_act.data(), k, 0, rows, k, bias.data(), mask.data(),
                       kind, gm.data());
    std::vector<double> want_gm(k, 0.0);
    for (int64_t i = 0; i < rows * k; ++i) {
      const int64_t j = i % k;
      const double z = double(h0[i]) + bias[j], y = math::activation(z, kind);
      KP_CHECK_NEAR(act[i], y, 3e-6 * (1.0 + std::fabs(y)));
      KP_CHECK_NEAR(h[i], double(act[i]) * mask[j], 1e-6 * (1.0 + std::fabs(y)));
      want_gm[j] += double(gs0[i]) * act[i];
      const double want_pre = (double(gs0[i]) * mask[j] + grad_act[i]) * math::activation_grad(z, kind);
      KP_CHECK_NEAR(gs[i], want_pre, 1e-5 * (1.0 + std::fabs(want_pre)));
    }
    for (int64_t j = 0; j < k; ++j) KP_CHECK_NEAR(gm[j], want_gm[j], 1e-4);
  }
}

static void test_activation_backward(const KernelTable& t) {
  const int64_t rows = 29, k = 53;
  const auto h = pseudo_random(rows * k, 8), bias = pseudo_random(k, 9), grad_act = pseudo_random(rows * k, 10);
  for (int kind : {math::kGelu, math::kGeluTanh, math::kRelu, math::kSilu}) {
    std::vector<float> act(rows * k, -7.0f), grad_h(rows * k, -7.0f);
    t.activation_backward_f32(h.data(), grad_act.data(), act.data(), grad_h.data(), 0, 11, k, bias.data(), kind);
    t.activation_backward_f32(h.data(), grad_act.data(), act.data(), grad_h.data(), 11, rows, k, bias.data(), kind);
    std::vector<Bf16> h16(rows * k), ga16(rows * k), act16(rows * k), gh16(rows * k);
    for (int64_t i = 0; i < rows * k; ++i) {
      h16[i] = math::float_to_bf16(h[i]);
      ga16[i] = math::float_to_bf16(grad_act[i]);
    }
    t.activation_backward_bf16(h16.data(), ga16.data(), act16.data(), gh16.data(), 0, rows, k, bias.data(), kind);
    for (int64_t i = 0; i < rows * k; ++i) {
      const int64_t j = i % k;
      const double z = double(h[i]) + bias[j], y = math::activation(z, kind);
      const double g = double(grad_act[i]) * math::activation_grad(z, kind);
      KP_CHECK_NEAR(act[i], y, 3e-6 * (1.0 + std::fabs(y)));
      KP_CHECK_NEAR(grad_h[i], g, 1e-5 * (1.0 + std::fabs(g)));
      const double z16 = double(math::bf16_to_float(h16[i])) + bias[j];
      const double g16 = double(math::bf16_to_float(ga16[i])) * math::activation_grad(z16, kind);
      KP_CHECK_NEAR(math::bf16_to_float(act16[i]), math::activation(z16, kind), 1e-2 * (1.0 + std::fabs(y)));
      KP_CHECK_NEAR(math::bf16_to_float(gh16[i]), g16, 1e-2 * (1.0 + std::fabs(g16)));
    }
  }
}

static void test_cholesky_solve(const KernelTable& t) {
  const int64_t n = 9, m = 70;
  std::vector<double> l(n * n, 0.0), x(n * m), b(n * m);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j <= i; ++j) l[i * n + j] = i == j ? 2.0 + i : std::sin(double(i + 2 * j));
  for (int64_t i = 0; i < n * m; ++i) x[i] = std::cos(0.3 * double(i));
  for (int64_t i = 0; i < n; ++i)  // b = L L^T x
    for (int64_t c = 0; c < m; ++c) {
      double s = 0.0;
      for (int64_t p = 0; p < n; ++p) {
        double llt = 0.0;
        for (int64_t q = 0; q < n; ++q) llt += l[i * n + q] * l[p * n + q];
        s += llt * x[p * m + c];
      }
      b[i * m + c] = s;
    }
  t.cholesky_solve_f64(l.data(), n, b.data(), 64, m);             // first 64 columns
  t.cholesky_solve_f64(l.data(), n, b.data() + 64, m - 64, m);    // the rest
  for (int64_t i = 0; i < n * m; ++i) KP_CHECK_NEAR(b[i], x[i], 1e-10);
}

// Attention of one (sequence, head) over n real keys, rows >= n query rows (padded ones attend too), against
// float64 loops: forward, log-sum-exp and the three gradients, for the tiled head sizes and a generic one.
static void test_attention(const KernelTable& t) {
  for (int64_t d : {5, 32, 64})
    for (int64_t n : {0, 1, 23}) {
      const int64_t rows = n + 3, ld = 3 * d + 1;  // strided rows, as heads of a fused projection
      const auto q = pseudo_random(rows * ld, 11), k = pseudo_random(rows * ld, 12), v = pseudo_random(rows * ld, 13);
      const auto go = pseudo_random(rows * d, 14);
      const float scale = 1.0f / std::sqrt(float(d));
      std::vector<float> out(rows * d), lse(rows), dq(rows * d), dk(rows * d, -7.0f), dv(rows * d, -7.0f);
      std::vector<float> scratch(attention_scratch(rows, d));
      t.attention_forward_f32(q.data(), ld, k.data(), v.data(), ld, rows, n, d, scale, out.data(), d, lse.data(),
                              scratch.data());
      t.attention_backward_f32(q.data(), ld, k.data(), v.data(), ld, out.data(), go.data(), d, lse.data(), rows, n, d,
                               scale, dq.data(), d, dk.data(), dv.data(), d, scratch.data());
      std::vector<double> wdk(n * d, 0.0), wdv(n * d, 0.0);
      for (int64_t i = 0; i < rows; ++i) {
        std::vector<double> p(n);
        double m = -1e300, l = 0.0;
        for (int64_t j = 0; j < n; ++j) {
          double s = 0.0;
          for (int64_t c = 0; c < d; ++c) s += double(q[i * ld + c]) * k[j * ld + c];
          p[j] = s * scale;
          m = std::max(m, p[j]);
        }
        for (int64_t j = 0; j < n; ++j) l += (p[j] = std::exp(p[j] - m));
        for (int64_t j = 0; j < n; ++j) p[j] /= l;
        if (n > 0) KP_CHECK_NEAR(lse[i], m + std::log(l), 1e-5);
        std::vector<double> o(d, 0.0), dp(n, 0.0);
        for (int64_t j = 0; j < n; ++j)
          for (int64_t c = 0; c < d; ++c) {
            o[c] += p[j] * v[j * ld + c];
            dp[j] += double(go[i * d + c]) * v[j * ld + c];
          }
        double delta = 0.0;
        for (int64_t c = 0; c < d; ++c) delta += o[c] * go[i * d + c];
        std::vector<double> wdq(d, 0.0);
        for (int64_t j = 0; j < n; ++j) {
          const double ds = p[j] * (dp[j] - delta) * scale;
          for (int64_t c = 0; c < d; ++c) {
            wdq[c] += ds * k[j * ld + c];
            wdk[j * d + c] += ds * q[i * ld + c];
            wdv[j * d + c] += p[j] * go[i * d + c];
          }
        }
        for (int64_t c = 0; c < d; ++c) {
          KP_CHECK_NEAR(out[i * d + c], o[c], 1e-5);
          KP_CHECK_NEAR(dq[i * d + c], wdq[c], 1e-4);
        }
      }
      for (int64_t x = 0; x < rows * d; ++x) {   // rows >= n of dk, dv are left alone
        KP_CHECK_NEAR(dk[x], x < n * d ? wdk[x] : -7.0, 1e-4);
        KP_CHECK_NEAR(dv[x], x < n * d ? wdv[x] : -7.0, 1e-4);
      }
    }
}

int main() {
  std::printf("detected: %s\n", isa_name(detected_isa()));
  const char* cap = std::getenv("KPRUNE_CPU_CAPABILITY");
  if (cap && std::string(cap) == "generic") KP_CHECK(detected_isa() == Isa::kGeneric && active_isa() == Isa::kGeneric);
  for (Isa isa : {Isa::kGeneric, Isa::kAvx2, Isa::kAvx512}) {
    if (set_isa(isa) != isa) continue;  // not supported here
    std::printf("testing %s\n", isa_name(isa));
    const KernelTable& t = kernels();
    test_importance(t);
    test_group_sums(t);
    test_ffn(t);
    test_activation_backward(t);
    test_cholesky_solve(t);
    test_attention(t);
  }
  return KP_REPORT();
}
