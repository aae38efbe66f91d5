// Damped Cholesky through ATen's LAPACK/cuSOLVER bindings: device-agnostic, shared by the CPU and
// CUDA implementations of solve_damped for systems too large for their own kernels.
#pragma once

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cholesky_solve.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/linalg_cholesky_ex.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/where.h>

namespace kprune {

[[noreturn]] inline void damped_cholesky_failed(int64_t max_tries, double damping) {
  TORCH_CHECK(false, "damped Cholesky failed after ", max_tries, " escalations (final damping ", damping, ")");
}

// g: [B, k, k]; r: [B, k, m], both in the working dtype -> solution in the working dtype. Each
// system's damping starts at damping * mean(diag) and grows 10x while its factorisation fails.
inline at::Tensor solve_damped_aten(const at::Tensor& g, const at::Tensor& r, double damping, int64_t max_tries) {
  const at::Tensor diag_mean = g.diagonal(0, -2, -1).mean(-1);
  at::Tensor lambda = at::where(diag_mean > 0, diag_mean, at::ones_like(diag_mean)) * damping;  // [B]
  for (int64_t attempt = 0; attempt < max_tries; ++attempt) {
    at::Tensor shifted = g.clone();
    shifted.diagonal(0, -2, -1).add_(lambda.unsqueeze(-1));
    auto [chol, info] = at::linalg_cholesky_ex(shifted);
    const at::Tensor failed = info != 0;
    if (!failed.any().item<bool>()) {
      at::Tensor x = at::cholesky_solve(r, chol);
      TORCH_CHECK(at::isfinite(x).all().item<bool>(), "damped Cholesky solve produced non-finite values (damping ",
                  lambda.max().item<double>(), ")");
      return x;
    }
    lambda = at::where(failed, lambda * 10, lambda);
  }
  damped_cholesky_failed(max_tries, lambda.max().item<double>() / 10);
}

}  // namespace kprune
