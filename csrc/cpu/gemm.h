// The CPU GEMMs of the kprune ops: gemm_nt(x, w) = x w^T (+ bias), float32 through oneDNN where that is faster.
//
// torch sends a float32 at::mm on the CPU to MKL's sgemm, whose AVX-512 kernels are reserved to
// Intel CPUs: on the AMD EPYC this project was first measured on it ran at 76-86 GFLOP/s on one core
// against 168-197 for oneDNN's float32 matmul, which torch also ships; on an Intel Xeon (Sapphire
// Rapids) MKL ran at 88-107 and oneDNN at 67-93 (benchmarks/bench_gemm.py). So by default ("auto")
// float32 GEMMs go to oneDNN on x86 CPUs whose vendor is not GenuineIntel, to MKL elsewhere.
// Same IEEE float32 arithmetic, another kernel; GEMMs under a size threshold (set_gemm_backend's
// min_macs, 2^25 multiply-adds by default), other dtypes and other devices keep at::mm/at::addmm.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

namespace kprune {
namespace cpu {

// x: [..., k]; w: [n, k] (any strides) -> x w^T + bias, [..., n]
at::Tensor gemm_nt(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias = std::nullopt);

// "onednn" or "aten": the backend float32 CPU GEMMs use now. The first one: KPRUNE_GEMM=onednn|aten, or
// unset (or "auto") onednn_by_default(); onednn only when this torch has it.
std::string gemm_backend();
// True on x86 CPUs whose vendor is not GenuineIntel (where MKL's sgemm leaves AVX-512 unused).
bool onednn_by_default();
// Selects the backend ("onednn" falls back to "aten" when torch lacks it) and, when min_macs >= 0, the
// size (rows x k x n multiply-adds) from which a GEMM goes to oneDNN; returns the backend in use.
std::string set_gemm_backend(const std::string& name, int64_t min_macs = -1);
int64_t gemm_min_macs();

}  // namespace cpu
}  // namespace kprune
