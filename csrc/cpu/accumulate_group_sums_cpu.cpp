// accumulate_group_sums on the CPU: per-group sums of act*grad for logical groups whose samples are
// spread over compute batches. One pass over act and grad, parallel over column blocks: every thread
// owns its columns of group_sums, and adds a group's segments in segment order (no atomics).
#include <torch/library.h>

#include "utils.h"

namespace kprune {
namespace cpu {
namespace {

// act, grad: [T, U]; offsets: int64 [S + 1]; segment_group: int64 [S]; group_sums: fp64 [G, U];
// act_sq_sum: fp32 [U] (both updated in place)
void accumulate_group_sums_cpu(const at::Tensor& act, const at::Tensor& grad, const at::Tensor& offsets,
                               const at::Tensor& segment_group, const at::Tensor& group_sums,
                               const at::Tensor& act_sq_sum) {
  const at::Tensor off = check_group_sums(act, grad, offsets, segment_group, group_sums, act_sq_sum);
  const int64_t units = act.size(1), segments = offsets.numel() - 1;
  const int64_t* o = off.data_ptr<int64_t>();
  if (segments == 0 || units == 0 || o[segments] == o[0]) return;

  const std::pair<at::Tensor, at::Tensor> dense = dense_columns(act, grad);
  const at::Tensor &a = dense.first, &g = dense.second;
  const int64_t ld = a.stride(0);
  const at::Tensor seg_group = segment_group.contiguous();
  const int64_t* sg = seg_group.data_ptr<int64_t>();
  const bool sums_ok = group_sums.stride(1) == 1;
  at::Tensor sums = sums_ok ? group_sums : group_sums.contiguous();
  at::Tensor asq = act_sq_sum.is_contiguous() ? act_sq_sum : act_sq_sum.contiguous();
  const int64_t ldg = sums.stride(0);
  const ColumnBlocks cols = column_blocks(units);
  const int64_t width = cols.width, blocks = cols.count;
  const KernelTable& table = kernels();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "accumulate_group_sums_cpu", [&] {
    using T = typename Storage<scalar_t>::type;
    const T* ap = data<scalar_t>(a);
    const T* gp = data<scalar_t>(g);
    double* sp = sums.data_ptr<double>();
    float* as = asq.data_ptr<float>();
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t u0 = b * width, w = std::min(width, units - u0);
        run_group_sums(table, ap, gp, ld, o, sg, segments, u0, w, sp, ldg, as);
      }
    });
  });
  if (!group_sums.is_same(sums)) group_sums.copy_(sums);
  if (!act_sq_sum.is_same(asq)) act_sq_sum.copy_(asq);
}

}  // namespace

TORCH_LIBRARY_IMPL(kprune, CPU, m) { m.impl("accumulate_group_sums", &accumulate_group_sums_cpu); }

}  // namespace cpu
}  // namespace kprune
