// gram_accumulate on the CPU: one fused gather + conversion pass to the accumulators' type (float32 or
// float64), then two GEMMs in that type.
#include <torch/library.h>

#include "utils.h"

namespace kprune {
namespace cpu {
namespace {

// a: [T, U] -> [T, k] of type acc_t holding a[:, columns] (all columns when columns is undefined)
template <typename acc_t>
at::Tensor gather_as(const at::Tensor& a, const at::Tensor& columns) {
  const auto type = c10::CppTypeToScalarType<acc_t>::value;
  if (!columns.defined()) return a.scalar_type() == type ? a : a.to(type);
  const at::Tensor cols = columns.contiguous();
  const int64_t rows = a.size(0), k = cols.numel();
  at::Tensor out = at::empty({rows, k}, a.options().dtype(type));
  if (rows == 0 || k == 0) return out;
  const int64_t* c = cols.data_ptr<int64_t>();
  const int64_t s0 = a.stride(0), s1 = a.stride(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "gram_gather", [&] {
    const scalar_t* src = a.data_ptr<scalar_t>();
    acc_t* dst = out.data_ptr<acc_t>();
    at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t t = r0; t < r1; ++t) {
        const scalar_t* row = src + t * s0;
        acc_t* o = dst + t * k;
        for (int64_t j = 0; j < k; ++j) o[j] = static_cast<acc_t>(static_cast<float>(row[c[j] * s1]));
      }
    });
  });
  return out;
}

// gram [k, k] += sel^T sel with sel [T, k] of gram's type, through sel_t = sel^T made contiguous (the
// GEMMs then read rows; one copy of sel, small beside the GEMM). Only the blocks on and above the
// diagonal are multiplied (the Gram matrix is symmetric): 3/4 of the GEMM work with 2 x 2 blocks; more,
// smaller blocks measured slower (the GEMMs become too thin for the BLAS to use all cores).
void symmetric_gram_update(const at::Tensor& gram, const at::Tensor& sel_t) {
  const int64_t k = sel_t.size(0);
  const int64_t blocks = k >= 512 ? 2 : 1;
  if (blocks < 2) {
    gram.add_(gemm_nt(sel_t, sel_t));
    return;
  }
  const int64_t width = (k + blocks - 1) / blocks;
  for (int64_t i = 0; i < k; i += width) {
    const int64_t wi = std::min(width, k - i);
    const at::Tensor ai = sel_t.narrow(0, i, wi);
    for (int64_t j = i; j < k; j += width) {
      const int64_t wj = std::min(width, k - j);
      const at::Tensor block = gemm_nt(ai, sel_t.narrow(0, j, wj));  // [wi, wj]
      gram.narrow(0, i, wi).narrow(1, j, wj).add_(block);
      if (j != i) gram.narrow(0, j, wj).narrow(1, i, wi).add_(block.t());
    }
  }
}

// a: [T, U]; b: [T, M]; columns: int64 [k] or None; gram [k, k] += A^T A; cross [k, M] += A^T b, both float32 or
// both float64 (the products of float32 data are then exact and only the sums round: a sum over another cut of
// the tokens into calls differs by float64 rounding alone)
void gram_accumulate_cpu(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& columns,
                         const at::Tensor& gram, const at::Tensor& cross) {
  const int64_t k = check_gram(a, b, columns, gram, cross);
  const bool has_cols = columns.has_value() && columns->defined();
  if (a.size(0) == 0 || k == 0) return;
  const at::Tensor cols = has_cols ? *columns : at::Tensor();
  const auto type = gram.scalar_type();
  const at::Tensor sel_t = (type == at::kDouble ? gather_as<double>(a, cols) : gather_as<float>(a, cols)).t().contiguous();
  symmetric_gram_update(gram, sel_t);   // sel_t: [k, T]
  cross.add_(gemm_nt(sel_t, (b.scalar_type() == type ? b : b.to(type)).t()));  // sel^T b
}

}  // namespace

TORCH_LIBRARY_IMPL(kprune, CPU, m) { m.impl("gram_accumulate", &gram_accumulate_cpu); }

}  // namespace cpu
}  // namespace kprune
