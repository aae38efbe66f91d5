// Torch-side helpers of the CUDA bindings (only compiled with KPRUNE_TORCH_BINDINGS, i.e. inside
// a CUDA build of torch; the device code above each binding needs none of this).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kprune/checks.h"
#include "utils.cuh"

namespace kprune {
namespace cuda {

template <typename scalar_t>
struct CudaType {
  using type = scalar_t;
};
template <>
struct CudaType<c10::BFloat16> {
  using type = Bf16;
};
template <>
struct CudaType<c10::Half> {
  using type = __half;
};

template <typename scalar_t>
typename CudaType<scalar_t>::type* device_ptr(const at::Tensor& t) {
  return reinterpret_cast<typename CudaType<scalar_t>::type*>(t.data_ptr<scalar_t>());
}

inline cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

inline int parse_activation(c10::string_view name) {
  if (name == "gelu") return math::kGelu;
  if (name == "gelu_tanh") return math::kGeluTanh;
  if (name == "relu") return math::kRelu;
  if (name == "silu") return math::kSilu;
  TORCH_CHECK_VALUE(false, "activation '", name, "' is not supported; expected one of gelu, gelu_tanh, relu, silu");
}

// Bias/mask parameters: float, or double for float64 data.
inline at::ScalarType param_dtype(at::ScalarType data) { return data == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace cuda
}  // namespace kprune

#define KPRUNE_DISPATCH_CUDA(TYPE, NAME, ...)                                        \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, [&] {        \
    using cuda_t = typename ::kprune::cuda::CudaType<scalar_t>::type;                \
    using param_t = std::conditional_t<std::is_same_v<cuda_t, double>, double, float>; \
    return (__VA_ARGS__)();                                                          \
  })

#define KPRUNE_CHECK_LAUNCH() C10_CUDA_KERNEL_LAUNCH_CHECK()
