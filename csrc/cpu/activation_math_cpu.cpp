// activation_math: the shared host/device activation functions (kprune/hd_math.h) as an op, so
// Python tests can compare them with torch's own activations.
#include <torch/library.h>

#include "utils.h"

namespace kprune {
namespace cpu {
namespace {

// x: float32 or float64, any shape -> f(x) or f'(x), same shape and dtype
at::Tensor activation_math_cpu(const at::Tensor& x, c10::string_view activation, bool derivative) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "activation_math supports float32 and float64, got ", x.scalar_type());
  const int kind = parse_activation(std::string(activation));
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in);
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "activation_math_cpu", [&] {
    const scalar_t* src = in.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, in.numel(), 4096, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        dst[i] = derivative ? math::activation_grad(src[i], kind) : math::activation(src[i], kind);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kprune, CPU, m) { m.impl("activation_math", &activation_math_cpu); }

}  // namespace cpu
}  // namespace kprune
