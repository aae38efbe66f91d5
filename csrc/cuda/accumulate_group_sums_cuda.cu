// accumulate_group_sums on the GPU, deterministic (no float atomics). Pass 1: one thread per
// (column, segment) sums its segment's act*grad (chunks of kChunk tokens in the accumulation type,
// folded into float64, as the CPU kernel does) and act^2 into scratch [S, U] buffers. Pass 2: one
// thread per column adds the segments in order to their groups' rows of group_sums and to act_sq.
#include "utils.cuh"

namespace kprune {
namespace cuda {

constexpr int kGroupThreads = 128;
constexpr int64_t kGroupChunk = 256;
constexpr int64_t kMaxGridY = 65535;

// act, grad: [T, ld]; offsets: [S + 1] (device); seg_ag: fp64 [S, U]; seg_aa: [S, U].
template <typename T, typename A>
__global__ void segment_sums_kernel(const T* __restrict__ act, const T* __restrict__ grad, int64_t ld,
                                    int64_t units, const int64_t* __restrict__ offsets, int64_t segments,
                                    double* __restrict__ seg_ag, A* __restrict__ seg_aa) {
  const int64_t u = int64_t(blockIdx.x) * kGroupThreads + threadIdx.x;
  if (u >= units) return;
  for (int64_t s = blockIdx.y; s < segments; s += gridDim.y) {
    double ag = 0.0;
    A aa = A(0);
    for (int64_t t0 = offsets[s]; t0 < offsets[s + 1]; t0 += kGroupChunk) {
      const int64_t t1 = t0 + kGroupChunk < offsets[s + 1] ? t0 + kGroupChunk : offsets[s + 1];
      A chunk = A(0);
      for (int64_t t = t0; t < t1; ++t) {
        const A a = Cvt<T>::load(act[t * ld + u]);
        chunk += a * A(Cvt<T>::load(grad[t * ld + u]));
        aa += a * a;
      }
      ag += double(chunk);
    }
    seg_ag[s * units + u] = ag;
    seg_aa[s * units + u] = aa;
  }
}

// group_sums[segment_group[s], u] += seg_ag[s, u] and act_sq[u] += sum_s seg_aa[s, u], segments in order.
template <typename A>
__global__ void group_fold_kernel(const double* __restrict__ seg_ag, const A* __restrict__ seg_aa, int64_t segments,
                                  int64_t units, const int64_t* __restrict__ segment_group,
                                  double* __restrict__ group_sums, float* __restrict__ act_sq) {
  const int64_t u = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (u >= units) return;
  A sq = A(0);
  for (int64_t s = 0; s < segments; ++s) {
    group_sums[segment_group[s] * units + u] += seg_ag[s * units + u];
    sq += seg_aa[s * units + u];
  }
  act_sq[u] += float(sq);
}

// seg_ag: fp64 [segments * units] and seg_aa: [segments * units] scratch (filled here).
template <typename T>
void launch_accumulate_group_sums(const T* act, const T* grad, int64_t ld, int64_t units, const int64_t* offsets,
                                  const int64_t* segment_group, int64_t segments, double* seg_ag,
                                  typename Cvt<T>::acc* seg_aa, double* group_sums, float* act_sq,
                                  cudaStream_t stream) {
  using A = typename Cvt<T>::acc;
  if (segments == 0 || units == 0) return;
  dim3 grid(static_cast<unsigned int>((units + kGroupThreads - 1) / kGroupThreads),
            static_cast<unsigned int>(segments < kMaxGridY ? segments : kMaxGridY));
  segment_sums_kernel<T, A><<<grid, kGroupThreads, 0, stream>>>(act, grad, ld, units, offsets, segments, seg_ag,
                                                                 seg_aa);
  group_fold_kernel<A><<<blocks_for(units, 256), 256, 0, stream>>>(seg_ag, seg_aa, segments, units, segment_group,
                                                                   group_sums, act_sq);
}

#define KPRUNE_INSTANTIATE_GROUP_SUMS(T)                                                                        \
  template void launch_accumulate_group_sums<T>(const T*, const T*, int64_t, int64_t, const int64_t*,           \
                                                const int64_t*, int64_t, double*, Cvt<T>::acc*, double*, float*, \
                                                cudaStream_t);
KPRUNE_INSTANTIATE_GROUP_SUMS(float)
KPRUNE_INSTANTIATE_GROUP_SUMS(double)
KPRUNE_INSTANTIATE_GROUP_SUMS(Bf16)
KPRUNE_INSTANTIATE_GROUP_SUMS(__half)

}  // namespace cuda
}  // namespace kprune

#if defined(KPRUNE_TORCH_BINDINGS)
#include "bindings.cuh"

namespace kprune {
namespace cuda {
namespace {

void accumulate_group_sums_cuda(const at::Tensor& act, const at::Tensor& grad, const at::Tensor& offsets,
                                const at::Tensor& segment_group, const at::Tensor& group_sums,
                                const at::Tensor& act_sq_sum) {
  const at::Tensor host_offsets = check_group_sums(act, grad, offsets, segment_group, group_sums, act_sq_sum);
  TORCH_CHECK(group_sums.is_contiguous() && act_sq_sum.is_contiguous(),
              "group_sums and act_sq_sum must be contiguous on the GPU");
  const int64_t units = act.size(1), segments = offsets.numel() - 1;
  const int64_t* o = host_offsets.data_ptr<int64_t>();
  if (segments == 0 || units == 0 || o[segments] == o[0]) return;
  const c10::cuda::CUDAGuard guard(act.device());
  const at::Tensor a = act.contiguous(), g = grad.contiguous(), off = offsets.contiguous();
  const at::Tensor seg_group = segment_group.contiguous();
  const auto acc = act.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor seg_ag = at::empty({segments * units}, act.options().dtype(at::kDouble));
  at::Tensor seg_aa = at::empty({segments * units}, act.options().dtype(acc));
  KPRUNE_DISPATCH_CUDA(a.scalar_type(), "accumulate_group_sums_cuda", [&] {
    launch_accumulate_group_sums<cuda_t>(device_ptr<scalar_t>(a), device_ptr<scalar_t>(g), units, units,
                                         off.data_ptr<int64_t>(), seg_group.data_ptr<int64_t>(), segments,
                                         seg_ag.data_ptr<double>(), seg_aa.data_ptr<param_t>(),
                                         group_sums.data_ptr<double>(), act_sq_sum.data_ptr<float>(), stream());
  });
  KPRUNE_CHECK_LAUNCH();
}

}  // namespace

TORCH_LIBRARY_IMPL(kprune, CUDA, m) { m.impl("accumulate_group_sums", &accumulate_group_sums_cuda); }

}  // namespace cuda
}  // namespace kprune
#endif  // KPRUNE_TORCH_BINDINGS
