// The one schema file: every kprune op is declared here; backends only add implementations
// (TORCH_LIBRARY_IMPL in csrc/cpu/*_cpu.cpp and csrc/cuda/*_cuda.cu).
#if defined(KPRUNE_PYTHON_MODULE)
#include <Python.h>
#endif

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <mutex>
#include <set>
#include <string>

#include "cpu/gemm.h"
#include "cpu/isa.h"

namespace {

std::string cpu_capability() { return kprune::cpu::isa_name(kprune::cpu::active_isa()); }

std::string set_cpu_capability(const std::string& name) {
  using kprune::cpu::Isa;
  Isa want = name == "avx512" ? Isa::kAvx512 : name == "avx2" ? Isa::kAvx2 : Isa::kGeneric;
  TORCH_CHECK_VALUE(name == "avx512" || name == "avx2" || name == "generic",
                    "cpu capability must be one of generic, avx2, avx512; got '", name, "'");
  return kprune::cpu::isa_name(kprune::cpu::set_isa(want));
}

// How many threads one at::parallel_for of the kernels really uses (1 when the build lacks OpenMP,
// whatever torch.get_num_threads() says).
int64_t cpu_threads_used() {
  std::mutex lock;
  std::set<int> seen;
  at::parallel_for(0, int64_t(1) << 12, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> guard(lock);
    seen.insert(at::get_thread_num());
  });
  return static_cast<int64_t>(seen.size());
}

}  // namespace

TORCH_LIBRARY(kprune, m) {
  // act, grad: [T, U]; offsets: int64 [G + 1]; grad_sq_sum, act_sq_sum: fp32 [U]
  m.def("accumulate_importance(Tensor act, Tensor grad, Tensor offsets, Tensor(a!) grad_sq_sum, "
        "Tensor(b!) act_sq_sum) -> ()");
  // act, grad: [T, U]; offsets: int64 [S + 1] (segments = samples); segment_group: int64 [S] in [0, G);
  // group_sums: fp64 [G, U] += per-group sums of act*grad; act_sq_sum: fp32 [U] += sum act^2
  m.def("accumulate_group_sums(Tensor act, Tensor grad, Tensor offsets, Tensor segment_group, "
        "Tensor(a!) group_sums, Tensor(b!) act_sq_sum) -> ()");
  // a: [T, U]; b: [T, M]; columns: int64 [k]; gram: fp32 [k, k]; cross: fp32 [k, M]
  m.def("gram_accumulate(Tensor a, Tensor b, Tensor? columns, Tensor(a!) gram, Tensor(b!) cross) -> ()");
  // gram: [..., k, k]; rhs: [..., k, m] -> fp32 [..., k, m]; precision: 0 auto, 32, 64
  m.def("solve_damped(Tensor gram, Tensor rhs, float damping=1e-4, int max_tries=8, int precision=0) -> Tensor");
  // x: [T, d]; w_in: [F, d]; w_out: [d_out, F]; kept: int64 [k]; mask: [k] -> (out [T, d_out], act [T, k])
  m.def("masked_ffn(Tensor x, Tensor w_in, Tensor? b_in, Tensor w_out, Tensor? b_out, Tensor kept, Tensor mask, "
        "str activation) -> (Tensor, Tensor)");
  // the same plus preact = x W_in[kept]^T [T, k] (no bias), kept for a backward without recomputation
  m.def("masked_ffn_with_preact(Tensor x, Tensor w_in, Tensor? b_in, Tensor w_out, Tensor? b_out, Tensor kept, "
        "Tensor mask, str activation) -> (Tensor, Tensor, Tensor)");
  // -> (grad_x [T, d] or [0], grad_mask [k] or [0]); preact recomputed when None
  m.def("masked_ffn_backward(Tensor grad_out, Tensor? grad_act, Tensor x, Tensor w_in, Tensor? b_in, Tensor w_out, "
        "Tensor kept, Tensor mask, Tensor act, str activation, bool need_x, bool need_mask, Tensor? preact=None) "
        "-> (Tensor, Tensor)");
  // preact: [T, k] = x W_in^T (no bias); bias: [k]; grad_act: [T, k]
  // -> (act = f(preact + bias), grad_preact = grad_act * f'(preact + bias)), both [T, k]
  m.def("activation_backward(Tensor preact, Tensor? bias, Tensor grad_act, str activation) -> (Tensor, Tensor)");
  // context: [T, H * hs]; w_out: [d, H * hs]; kept_heads: int64 [k]; mask: [k] -> (out [T, d], act [T, k * hs])
  m.def("masked_attention_output(Tensor context, Tensor w_out, Tensor? b_out, Tensor kept_heads, Tensor mask, "
        "int head_size) -> (Tensor, Tensor)");
  // -> (grad_context [T, H * hs] or [0], grad_mask [k] or [0])
  m.def("masked_attention_output_backward(Tensor grad_out, Tensor? grad_act, Tensor context, Tensor w_out, "
        "Tensor kept_heads, Tensor mask, Tensor act, int head_size, bool need_context, bool need_mask) "
        "-> (Tensor, Tensor)");
  // q, k, v: float32 [B, S, H, D] (stride 1 along D); lengths: int64 [B], the real keys of each sequence (a
  // prefix) -> (out [B, S, H, D], lse [B, H, S]): softmax(scale q k^T) v over keys [0, lengths[b])
  m.def("attention(Tensor q, Tensor k, Tensor v, Tensor lengths, float scale) -> (Tensor, Tensor)");
  // -> (grad_q, grad_k, grad_v) [B, S, H, D]
  m.def("attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor lengths, "
        "float scale) -> (Tensor, Tensor, Tensor)");
  // The shared host/device activation math, exposed for tests: f(x) or f'(x), float32/float64.
  m.def("activation_math(Tensor x, str activation, bool derivative) -> Tensor");
  // x: [..., k]; w: [n, k]; bias: [n] -> x w^T + bias [..., n] (float32 CPU GEMMs through oneDNN, gemm.h)
  m.def("linear(Tensor x, Tensor w, Tensor? bias=None) -> Tensor");
  m.def("gemm_backend() -> str", &kprune::cpu::gemm_backend);
  m.def("set_gemm_backend(str name, int min_macs=-1) -> str", &kprune::cpu::set_gemm_backend);
  m.def("gemm_min_macs() -> int", &kprune::cpu::gemm_min_macs);
  m.def("cpu_capability() -> str", &cpu_capability);
  m.def("cpu_threads_used() -> int", &cpu_threads_used);
  m.def("set_cpu_capability(str name) -> str", &set_cpu_capability);
}

#if defined(KPRUNE_PYTHON_MODULE)
// Importing kprune_ext._C loads this library, which registers the ops above.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "kprune compiled ops (torch.ops.kprune)", -1, nullptr};
  return PyModule_Create(&module);
}
#endif
