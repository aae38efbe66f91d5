// The ATen ops through the dispatcher (libtorch, no Python): registration, and results against
// compositions of ATen ops.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <tuple>

#include "harness.h"

namespace {

c10::OperatorHandle op(const char* name) { return c10::Dispatcher::singleton().findSchemaOrThrow(name, ""); }

void test_registered() {
  for (const char* name : {"kprune::accumulate_importance", "kprune::accumulate_group_sums", "kprune::gram_accumulate",
                           "kprune::solve_damped", "kprune::masked_ffn", "kprune::masked_ffn_backward",
                           "kprune::masked_attention_output", "kprune::masked_attention_output_backward",
                           "kprune::activation_math"}) {
    KP_CHECK(c10::Dispatcher::singleton().findSchema({name, ""}).has_value());
    KP_CHECK(op(name).hasKernelForDispatchKey(c10::DispatchKey::CPU));
  }
}

void test_accumulate_importance() {
  at::manual_seed(0);
  const at::Tensor act = at::randn({70, 33}), grad = at::randn({70, 33});
  const at::Tensor offsets = at::tensor(std::vector<int64_t>{0, 20, 20, 70});
  at::Tensor grad_sq = at::zeros({33}), act_sq = at::zeros({33});
  op("kprune::accumulate_importance")
      .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&)>()
      .call(act, grad, offsets, grad_sq, act_sq);
  const at::Tensor prod = act * grad;
  const at::Tensor want = prod.slice(0, 0, 20).sum(0).square() + prod.slice(0, 20, 70).sum(0).square();
  KP_CHECK(at::allclose(grad_sq, want, 1e-4, 1e-4));
  KP_CHECK(at::allclose(act_sq, act.square().sum(0), 1e-4, 1e-4));
}

void test_accumulate_group_sums() {
  at::manual_seed(3);
  const at::Tensor act = at::randn({70, 33}), grad = at::randn({70, 33});
  const at::Tensor offsets = at::tensor(std::vector<int64_t>{0, 20, 20, 70});
  const at::Tensor segment_group = at::tensor(std::vector<int64_t>{1, 0, 1});
  at::Tensor sums = at::zeros({2, 33}, at::kDouble), act_sq = at::zeros({33});
  op("kprune::accumulate_group_sums")
      .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                  const at::Tensor&)>()
      .call(act, grad, offsets, segment_group, sums, act_sq);
  const at::Tensor prod = act.to(at::kDouble) * grad.to(at::kDouble);
  KP_CHECK(at::allclose(sums[0], at::zeros({33}, at::kDouble)));
  KP_CHECK(at::allclose(sums[1], prod.sum(0), 1e-5, 1e-5));
  KP_CHECK(at::allclose(act_sq, act.square().sum(0), 1e-4, 1e-4));
}

void test_solve_damped() {
  at::manual_seed(1);
  const at::Tensor a = at::randn({3, 60, 20}, at::kDouble);
  const at::Tensor gram = at::matmul(a.transpose(1, 2), a).to(at::kFloat), rhs = at::randn({3, 20, 4});
  const at::Tensor x = op("kprune::solve_damped")
                           .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, int64_t, int64_t)>()
                           .call(gram, rhs, 1e-4, 8, 0);
  const at::Tensor lambda = gram.diagonal(0, -2, -1).mean(-1) * 1e-4;
  const at::Tensor shifted = gram.to(at::kDouble) + lambda.to(at::kDouble).view({3, 1, 1}) * at::eye(20, at::kDouble);
  KP_CHECK(at::allclose(x.to(at::kDouble), at::linalg_solve(shifted, rhs.to(at::kDouble)), 1e-5, 1e-5));
}

void test_masked_ffn() {
  at::manual_seed(2);
  const at::Tensor x = at::randn({9, 8}), w_in = at::randn({12, 8}), b_in = at::randn({12});
  const at::Tensor w_out = at::randn({8, 12}), b_out = at::randn({8});
  const at::Tensor kept = at::tensor(std::vector<int64_t>{3, 0, 11}), mask = at::rand({3});
  using Fn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                                const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                                                const at::Tensor&, c10::string_view);
  auto [out, act] = op("kprune::masked_ffn").typed<Fn>().call(x, w_in, b_in, w_out, b_out, kept, mask, "relu");
  const at::Tensor want_act = at::relu(at::addmm(b_in.index_select(0, kept), x, w_in.index_select(0, kept).t()));
  KP_CHECK(at::allclose(act, want_act, 1e-5, 1e-5));
  KP_CHECK(at::allclose(out, at::addmm(b_out, want_act * mask, w_out.index_select(1, kept).t()), 1e-5, 1e-5));
}

}  // namespace

int main() {
  test_registered();
  test_accumulate_importance();
  test_accumulate_group_sums();
  test_solve_damped();
  test_masked_ffn();
  return KP_REPORT();
}
