// attention on the CPU: softmax attention over each sequence's real keys (a prefix of `lengths`),
// one (sequence, head) per task; kernels in kprune/attention_kernels.h, by instruction set.
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "utils.h"

namespace kprune {
namespace cpu {
namespace {

void check_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lengths) {
  TORCH_CHECK_VALUE(q.dim() == 4, "attention: q must be [batch, seq, heads, head_size], got ", q.sizes());
  TORCH_CHECK_VALUE(k.sizes() == q.sizes() && v.sizes() == q.sizes(), "attention: q, k, v must have one shape, got ",
                    q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK_TYPE(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
                   "attention: q, k, v must be float32, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
                   v.scalar_type());
  TORCH_CHECK_VALUE(lengths.dim() == 1 && lengths.size(0) == q.size(0) && lengths.scalar_type() == at::kLong,
                    "attention: lengths must be int64 [", q.size(0), "], got ", lengths.scalar_type(), " ",
                    lengths.sizes());
  if (lengths.numel() > 0) {
    const int64_t lo = lengths.min().item<int64_t>(), hi = lengths.max().item<int64_t>();
    TORCH_CHECK_VALUE(lo >= 0 && hi <= q.size(1), "attention: lengths must lie in [0, ", q.size(1), "], got [", lo,
                      ", ", hi, "]");
  }
}

// q, k, v with stride 1 along head_size (a [batch, seq, heads * head_size] tensor viewed as 4-D stays as it
// is) and k, v with one stride (the kernels take one row stride for both).
std::tuple<at::Tensor, at::Tensor, at::Tensor> rows_of_heads(const at::Tensor& q, const at::Tensor& k,
                                                            const at::Tensor& v) {
  auto unit = [](const at::Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); };
  at::Tensor ku = unit(k), vu = unit(v);
  if (ku.strides() != vu.strides()) {
    ku = ku.contiguous();
    vu = vu.contiguous();
  }
  return {unit(q), ku, vu};
}

// q, k, v: float32 [B, S, H, D]; lengths: int64 [B] -> (out [B, S, H, D], lse [B, H, S])
std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                                 const at::Tensor& lengths, double scale) {
  check_attention(q_in, k_in, v_in, lengths);
  const auto [q, k, v] = rows_of_heads(q_in, k_in, v_in);
  const int64_t B = q.size(0), S = q.size(1), H = q.size(2), D = q.size(3);
  at::Tensor out = at::empty({B, S, H, D}, q.options());
  at::Tensor lse = at::empty({B, H, S}, q.options());
  const at::Tensor lens = lengths.contiguous();
  const int64_t* len = lens.data_ptr<int64_t>();
  const KernelTable& table = kernels();
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  float* lp = lse.data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> scratch(attention_scratch(S, D));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / H, h = t % H;
      table.attention_forward_f32(qp + b * q.stride(0) + h * q.stride(2), q.stride(1),
                                  kp + b * k.stride(0) + h * k.stride(2), vp + b * v.stride(0) + h * v.stride(2),
                                  k.stride(1), S, len[b], D, static_cast<float>(scale), op + (b * S * H + h) * D, H * D,
                                  lp + (b * H + h) * S, scratch.data());
    }
  });
  return {out, lse};
}

// -> (grad_q, grad_k, grad_v), float32 [B, S, H, D]; rows of k and v at or beyond a sequence's length get 0
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& q_in,
                                                                     const at::Tensor& k_in, const at::Tensor& v_in,
                                                                     const at::Tensor& out_in, const at::Tensor& lse_in,
                                                                     const at::Tensor& lengths, double scale) {
  check_attention(q_in, k_in, v_in, lengths);
  TORCH_CHECK_VALUE(grad_out_in.sizes() == q_in.sizes() && out_in.sizes() == q_in.sizes(),
                    "attention_backward: grad_out and out must be ", q_in.sizes());
  const int64_t B = q_in.size(0), S = q_in.size(1), H = q_in.size(2), D = q_in.size(3);
  TORCH_CHECK_VALUE(lse_in.dim() == 3 && lse_in.size(0) == B && lse_in.size(1) == H && lse_in.size(2) == S,
                    "attention_backward: lse must be [", B, ", ", H, ", ", S, "], got ", lse_in.sizes());
  const auto [q, k, v] = rows_of_heads(q_in, k_in, v_in);
  const at::Tensor go = grad_out_in.to(at::kFloat).contiguous(), out = out_in.contiguous(), lse = lse_in.contiguous();
  at::Tensor dq = at::empty({B, S, H, D}, q.options());
  at::Tensor dk = at::zeros({B, S, H, D}, q.options()), dv = at::zeros({B, S, H, D}, q.options());
  const at::Tensor lens = lengths.contiguous();
  const int64_t* len = lens.data_ptr<int64_t>();
  const KernelTable& table = kernels();
  at::parallel_for(0, B * H, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> scratch(attention_scratch(S, D));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / H, h = t % H;
      const int64_t row0 = (b * S * H + h) * D;   // (b, 0, h, 0) of a contiguous [B, S, H, D]
      table.attention_backward_f32(
          q.data_ptr<float>() + b * q.stride(0) + h * q.stride(2), q.stride(1),
          k.data_ptr<float>() + b * k.stride(0) + h * k.stride(2), v.data_ptr<float>() + b * v.stride(0) + h * v.stride(2),
          k.stride(1), out.data_ptr<float>() + row0, go.data_ptr<float>() + row0, H * D,
          lse.data_ptr<float>() + (b * H + h) * S, S, len[b], D, static_cast<float>(scale), dq.data_ptr<float>() + row0,
          H * D, dk.data_ptr<float>() + row0, dv.data_ptr<float>() + row0, H * D, scratch.data());
    }
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(kprune, CPU, m) {
  m.impl("attention", &attention_cpu);
  m.impl("attention_backward", &attention_backward_cpu);
}

}  // namespace cpu
}  // namespace kprune
