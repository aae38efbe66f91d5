// accumulate_importance on the GPU, deterministic (no float atomics). Pass 1: one thread per
// (column, chunk of kChunk tokens) walks its chunk in token order and writes the chunk's summary
// (head / inner / tail group sums of act*grad, see kprune/hd_reduce.h) and its act^2 sum to scratch
// [chunks, U] buffers. Pass 2: one thread per column folds its chunks in order into grad_sq, act_sq.
#include "utils.cuh"

namespace kprune {
namespace cuda {

constexpr int kThreads = 128;
constexpr int64_t kChunk = 256;

// Scratch of one launch: four [chunks, units] arrays of the accumulation type A.
template <typename A>
struct ImportanceScratch {
  A *head, *inner, *tail, *act_sq;
};

// act, grad: [T, ld]; offsets: [G + 1] (device); tokens offsets[0] .. offsets[G] are counted.
template <typename T, typename A>
__global__ void importance_chunk_kernel(const T* __restrict__ act, const T* __restrict__ grad, int64_t ld,
                                        int64_t units, const int64_t* __restrict__ offsets, int64_t groups,
                                        ImportanceScratch<A> scratch) {
  const int64_t u = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t lo = offsets[0], hi = offsets[groups];
  const int64_t c = blockIdx.y, t0 = lo + c * kChunk;
  if (u >= units || t0 >= hi) return;
  const int64_t t1 = t0 + kChunk < hi ? t0 + kChunk : hi;
  A sq = A(0);
  const math::ChunkSummary<A> s = math::summarise_chunk<A>(offsets, groups, t0, t1, [&](int64_t t) {
    const A a = Cvt<T>::load(act[t * ld + u]);
    sq += a * a;
    return a * A(Cvt<T>::load(grad[t * ld + u]));
  });
  const int64_t i = c * units + u;
  scratch.head[i] = s.head;
  scratch.inner[i] = s.inner;
  scratch.tail[i] = s.tail;
  scratch.act_sq[i] = sq;
}

// grad_sq[u] += sum_g (sum_{t in g} act*grad)^2 and act_sq[u] += sum_t act^2, chunks folded in order.
template <typename A>
__global__ void importance_fold_kernel(ImportanceScratch<A> scratch, int64_t chunks, int64_t units,
                                       const int64_t* __restrict__ offsets, int64_t groups,
                                       float* __restrict__ grad_sq, float* __restrict__ act_sq) {
  const int64_t u = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (u >= units) return;
  const int64_t lo = offsets[0], hi = offsets[groups];
  math::GroupSquareFold<A> fold;
  A sq = A(0);
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t t0 = lo + c * kChunk, t1 = t0 + kChunk < hi ? t0 + kChunk : hi;
    if (t0 >= hi) break;
    const int64_t i = c * units + u;
    const math::ChunkSummary<A> s = {scratch.head[i], scratch.inner[i], scratch.tail[i]};
    math::fold_chunk(fold, math::find_group(offsets, groups, t0), math::find_group(offsets, groups, t1 - 1), s);
    sq += scratch.act_sq[i];
  }
  grad_sq[u] += float(fold.total());
  act_sq[u] += float(sq);
}

// Chunks to cover `span` tokens (offsets[G] - offsets[0]); scratch needs 4 * chunks * units elements.
inline int64_t importance_chunks(int64_t span) { return (span + kChunk - 1) / kChunk; }

template <typename T>
void launch_accumulate_importance(const T* act, const T* grad, int64_t ld, int64_t span, int64_t units,
                                  const int64_t* offsets, int64_t groups, typename Cvt<T>::acc* scratch,
                                  float* grad_sq, float* act_sq, cudaStream_t stream) {
  using A = typename Cvt<T>::acc;
  const int64_t chunks = importance_chunks(span);
  if (chunks == 0 || units == 0 || groups == 0) return;
  const int64_t n = chunks * units;
  const ImportanceScratch<A> parts = {scratch, scratch + n, scratch + 2 * n, scratch + 3 * n};
  dim3 grid(static_cast<unsigned int>((units + kThreads - 1) / kThreads), static_cast<unsigned int>(chunks));
  importance_chunk_kernel<T, A><<<grid, kThreads, 0, stream>>>(act, grad, ld, units, offsets, groups, parts);
  importance_fold_kernel<A><<<blocks_for(units, 256), 256, 0, stream>>>(parts, chunks, units, offsets, groups,
                                                                        grad_sq, act_sq);
}

#define KPRUNE_INSTANTIATE_IMPORTANCE(T)                                                                      \
  template void launch_accumulate_importance<T>(const T*, const T*, int64_t, int64_t, int64_t, const int64_t*, \
                                                int64_t, Cvt<T>::acc*, float*, float*, cudaStream_t);
KPRUNE_INSTANTIATE_IMPORTANCE(float)
KPRUNE_INSTANTIATE_IMPORTANCE(double)
KPRUNE_INSTANTIATE_IMPORTANCE(Bf16)
KPRUNE_INSTANTIATE_IMPORTANCE(__half)

}  // namespace cuda
}  // namespace kprune

#if defined(KPRUNE_TORCH_BINDINGS)
#include "bindings.cuh"

namespace kprune {
namespace cuda {
namespace {

void accumulate_importance_cuda(const at::Tensor& act, const at::Tensor& grad, const at::Tensor& offsets,
                                const at::Tensor& grad_sq_sum, const at::Tensor& act_sq_sum) {
  const at::Tensor host_offsets = check_importance(act, grad, offsets, grad_sq_sum, act_sq_sum);
  TORCH_CHECK(grad_sq_sum.is_contiguous() && act_sq_sum.is_contiguous(),
              "grad_sq_sum and act_sq_sum must be contiguous on the GPU");
  const int64_t units = act.size(1), groups = offsets.numel() - 1;
  const int64_t* o = host_offsets.data_ptr<int64_t>();
  const int64_t span = o[groups] - o[0];
  if (groups == 0 || units == 0 || span == 0) return;
  const c10::cuda::CUDAGuard guard(act.device());
  const at::Tensor a = act.contiguous(), g = grad.contiguous(), off = offsets.contiguous();
  const auto acc = act.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor scratch = at::empty({4 * importance_chunks(span) * units}, act.options().dtype(acc));
  KPRUNE_DISPATCH_CUDA(a.scalar_type(), "accumulate_importance_cuda", [&] {
    launch_accumulate_importance<cuda_t>(device_ptr<scalar_t>(a), device_ptr<scalar_t>(g), units, span, units,
                                         off.data_ptr<int64_t>(), groups, scratch.data_ptr<param_t>(),
                                         grad_sq_sum.data_ptr<float>(), act_sq_sum.data_ptr<float>(), stream());
  });
  KPRUNE_CHECK_LAUNCH();
}

}  // namespace

TORCH_LIBRARY_IMPL(kprune, CUDA, m) { m.impl("accumulate_importance", &accumulate_importance_cuda); }

}  // namespace cuda
}  // namespace kprune
#endif  // KPRUNE_TORCH_BINDINGS
