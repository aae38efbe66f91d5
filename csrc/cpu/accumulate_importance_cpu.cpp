// accumulate_importance on the CPU: one pass over act and grad, parallel over column blocks.
#include <torch/library.h>

#include "utils.h"

namespace kprune {
namespace cpu {
namespace {

// act, grad: [T, U]; offsets: int64 [G + 1]; grad_sq_sum, act_sq_sum: fp32 [U] (updated in place)
void accumulate_importance_cpu(const at::Tensor& act, const at::Tensor& grad, const at::Tensor& offsets,
                               const at::Tensor& grad_sq_sum, const at::Tensor& act_sq_sum) {
  const at::Tensor off = check_importance(act, grad, offsets, grad_sq_sum, act_sq_sum);
  const int64_t units = act.size(1), groups = offsets.numel() - 1;
  const int64_t* o = off.data_ptr<int64_t>();
  if (groups == 0 || units == 0 || o[groups] == o[0]) return;

  const std::pair<at::Tensor, at::Tensor> dense = dense_columns(act, grad);
  const at::Tensor &a = dense.first, &g = dense.second;
  const int64_t ld = a.stride(0);
  at::Tensor gsq = grad_sq_sum.is_contiguous() ? grad_sq_sum : grad_sq_sum.contiguous();
  at::Tensor asq = act_sq_sum.is_contiguous() ? act_sq_sum : act_sq_sum.contiguous();
  const ColumnBlocks cols = column_blocks(units);
  const int64_t width = cols.width, blocks = cols.count;
  const KernelTable& table = kernels();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "accumulate_importance_cpu", [&] {
    using T = typename Storage<scalar_t>::type;
    const T* ap = data<scalar_t>(a);
    const T* gp = data<scalar_t>(g);
    float* gs = gsq.data_ptr<float>();
    float* as = asq.data_ptr<float>();
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t u0 = b * width, w = std::min(width, units - u0);
        run_importance(table, ap, gp, ld, o, groups, u0, w, gs, as);
      }
    });
  });
  if (!grad_sq_sum.is_same(gsq)) grad_sq_sum.copy_(gsq);
  if (!act_sq_sum.is_same(asq)) act_sq_sum.copy_(asq);
}

}  // namespace

TORCH_LIBRARY_IMPL(kprune, CPU, m) { m.impl("accumulate_importance", &accumulate_importance_cpu); }

}  // namespace cpu
}  // namespace kprune
