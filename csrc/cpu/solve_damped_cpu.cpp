// solve_damped on the CPU. Small systems (k <= 128): our own float64 Cholesky, parallel over
// systems and right-hand-side column blocks. Larger: LAPACK through ATen, float64 up to k = 1024,
// float32 above (as accurate as torch.linalg.lstsq in float32 and ~2x faster).
#include <torch/library.h>

#include <ATen/ExpandUtils.h>

#include <vector>

#include "solve_common.h"
#include "utils.h"

namespace kprune {
namespace cpu {
namespace {

constexpr int64_t kOwnSolverMaxK = 128;
constexpr int64_t kFloat64MaxK = 1024;
constexpr int64_t kRhsBlock = 64;

// g: float64 [B, k, k]; x: float64 [B, k, m] (rhs in, solution out)
void solve_small(const at::Tensor& g, at::Tensor& x, double damping, int64_t max_tries) {
  const int64_t batch = g.size(0), k = g.size(1), m = x.size(2);
  at::Tensor l = at::empty_like(g);
  std::vector<double> final_damping(batch, 0.0);
  std::vector<char> ok(batch, 0);
  const double* gp = g.data_ptr<double>();
  double* lp = l.data_ptr<double>();
  // grains keep small problems on one thread (a barrier costs more than they do)
  const int64_t factor_grain = std::max<int64_t>(1, (int64_t(1) << 21) / std::max<int64_t>(1, k * k * k / 3));
  at::parallel_for(0, batch, factor_grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const double* gb = gp + b * k * k;
      double* lb = lp + b * k * k;
      double diag = 0.0;
      for (int64_t i = 0; i < k; ++i) diag += gb[i * k + i];
      double lambda = math::initial_damping(diag / double(k), damping);
      for (int64_t attempt = 0; attempt < max_tries && !ok[b]; ++attempt) {
        std::copy(gb, gb + k * k, lb);
        for (int64_t i = 0; i < k; ++i) lb[i * k + i] += lambda;
        ok[b] = math::cholesky_lower<double>(lb, k, k);
        final_damping[b] = lambda;
        if (!ok[b]) lambda *= 10.0;
      }
    }
  });
  for (int64_t b = 0; b < batch; ++b)
    if (!ok[b]) damped_cholesky_failed(max_tries, final_damping[b]);
  const KernelTable& table = kernels();
  const int64_t col_blocks = (m + kRhsBlock - 1) / kRhsBlock;
  double* xp = x.data_ptr<double>();
  // below ~4e6 flops (~0.1 ms) one thread is faster than a barrier; above, blocks of ~2e6 flops
  // (12 heads of 64 with 768 right-hand sides: 36 blocks, 2x faster on two cores)
  const int64_t solve_flops = batch * 2 * k * k * m;
  const int64_t solve_grain = solve_flops < (int64_t(1) << 22)
                                  ? batch * col_blocks
                                  : std::max<int64_t>(1, (int64_t(1) << 21) / std::max<int64_t>(1, 2 * k * k * kRhsBlock));
  at::parallel_for(0, batch * col_blocks, solve_grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / col_blocks, c0 = (t % col_blocks) * kRhsBlock;
      table.cholesky_solve_f64(lp + b * k * k, k, xp + b * k * m + c0, std::min(kRhsBlock, m - c0), m);
    }
  });
}

// gram: [..., k, k]; rhs: [..., k, m] -> fp32 [..., k, m] solving (gram + lambda I) X = rhs
at::Tensor solve_damped_cpu(const at::Tensor& gram, const at::Tensor& rhs, double damping, int64_t max_tries,
                            int64_t precision) {
  check_solve(gram, rhs, damping, max_tries, precision);
  const int64_t k = gram.size(-1), m = rhs.size(-1);
  // Common batch shape (as torch.cholesky_solve broadcasts).
  std::vector<int64_t> batch_shape =
      at::infer_size(gram.sizes().slice(0, gram.dim() - 2), rhs.sizes().slice(0, rhs.dim() - 2));
  std::vector<int64_t> out_shape = batch_shape;
  out_shape.push_back(k);
  out_shape.push_back(m);
  if (k == 0 || m == 0 || c10::multiply_integers(batch_shape) == 0)
    return at::zeros(out_shape, rhs.options().dtype(at::kFloat));
  std::vector<int64_t> g_shape = batch_shape, r_shape = batch_shape;
  g_shape.insert(g_shape.end(), {k, k});
  r_shape.insert(r_shape.end(), {k, m});
  const bool use64 = precision == 64 || (precision == 0 && k <= kFloat64MaxK);
  const auto dtype = use64 ? at::kDouble : at::kFloat;
  at::Tensor g = gram.expand(g_shape).to(dtype).reshape({-1, k, k}).contiguous();
  at::Tensor r = rhs.expand(r_shape).to(dtype).reshape({-1, k, m});
  at::Tensor x;
  if (use64 && k <= kOwnSolverMaxK) {
    x = r.is_alias_of(rhs) ? r.clone(at::MemoryFormat::Contiguous) : r.contiguous();
    solve_small(g, x, damping, max_tries);
  } else {
    x = solve_damped_aten(g, r, damping, max_tries);
  }
  return x.to(at::kFloat).reshape(out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(kprune, CPU, m) { m.impl("solve_damped", &solve_damped_cpu); }

}  // namespace cpu
}  // namespace kprune
