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
  const auto type = q.scalar_type();
  TORCH_CHECK_TYPE((type == at::kFloat || type == at::kBFloat16) && k.scalar_type() == type && v.scalar_type() == type,
                   "attention: q, k, v must be all float32 or all bfloat16, got ", q.scalar_type(), ", ",
                   k.scalar_type(), ", ", v.scalar_type());
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

// One head of q, k or v as the float32 kernels read it: rows [rows, D] at stride ld. float32 data is read in
// place; bfloat16 is widened (exactly) into `buffer`, so both give the kernels the same values and the same
// results.
struct HeadRows {
  const float* rows;
  int64_t ld;
};

inline HeadRows head_rows(const float* src, int64_t ld, int64_t, int64_t, float*) { return {src, ld}; }

inline HeadRows head_rows(const at::BFloat16* src, int64_t ld, int64_t rows, int64_t d, float* buffer) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < d; ++c) buffer[i * d + c] = static_cast<float>(src[i * ld + c]);
  return {buffer, d};
}

// q, k, v: float32 or bfloat16 [B, S, H, D]; lengths: int64 [B] -> (out float32 [B, S, H, D], lse [B, H, S])
std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                                 const at::Tensor& lengths, double scale) {
  check_attention(q_in, k_in, v_in, lengths);
  const auto [q, k, v] = rows_of_heads(q_in, k_in, v_in);
  const int64_t B = q.size(0), S = q.size(1), H = q.size(2), D = q.size(3);
  const auto f32 = q.options().dtype(at::kFloat);
  at::Tensor out = at::empty({B, S, H, D}, f32);
  at::Tensor lse = at::empty({B, H, S}, f32);
  const at::Tensor lens = lengths.contiguous();
  const int64_t* len = lens.data_ptr<int64_t>();
  const KernelTable& table = kernels();
  float* op = out.data_ptr<float>();
  float* lp = lse.data_ptr<float>();
  const bool widen = q.scalar_type() == at::kBFloat16;
  auto run = [&](auto* qp, auto* kp, auto* vp) {
    at::parallel_for(0, B * H, 1, [&](int64_t t0, int64_t t1) {
      std::vector<float> scratch(attention_scratch(S, D) + (widen ? 3 * S * D : 0));
      float* wide = scratch.data() + attention_scratch(S, D);   // q, k, v of one head, widened
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / H, h = t % H, n = len[b];
        const auto qh = head_rows(qp + b * q.stride(0) + h * q.stride(2), q.stride(1), S, D, wide);
        const auto kh = head_rows(kp + b * k.stride(0) + h * k.stride(2), k.stride(1), n, D, wide + S * D);
        const auto vh = head_rows(vp + b * v.stride(0) + h * v.stride(2), v.stride(1), n, D, wide + 2 * S * D);
        TORCH_INTERNAL_ASSERT(kh.ld == vh.ld);
        table.attention_forward_f32(qh.rows, qh.ld, kh.rows, vh.rows, kh.ld, S, n, D, static_cast<float>(scale),
                                    op + (b * S * H + h) * D, H * D, lp + (b * H + h) * S, scratch.data());
      }
    });
  };
  if (widen)
    run(q.data_ptr<at::BFloat16>(), k.data_ptr<at::BFloat16>(), v.data_ptr<at::BFloat16>());
  else
    run(q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>());
  return {out, lse};
}

// -> (grad_q, grad_k, grad_v) [B, S, H, D] in q's type (bfloat16 ones rounded from the float32 kernel's, as a
// cast would); rows of k and v at or beyond a sequence's length get 0
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& q_in,
                                                                     const at::Tensor& k_in, const at::Tensor& v_in,
                                                                     const at::Tensor& out_in, const at::Tensor& lse_in,
                                                                     const at::Tensor& lengths, double scale) {
  check_attention(q_in, k_in, v_in, lengths);
  TORCH_CHECK_VALUE(grad_out_in.sizes() == q_in.sizes() && out_in.sizes() == q_in.sizes(),
                    "attention_backward: grad_out and out must be ", q_in.sizes());
  TORCH_CHECK_TYPE(out_in.scalar_type() == at::kFloat, "attention_backward: out must be float32, got ",
                   out_in.scalar_type());
  const int64_t B = q_in.size(0), S = q_in.size(1), H = q_in.size(2), D = q_in.size(3);
  TORCH_CHECK_VALUE(lse_in.dim() == 3 && lse_in.size(0) == B && lse_in.size(1) == H && lse_in.size(2) == S,
                    "attention_backward: lse must be [", B, ", ", H, ", ", S, "], got ", lse_in.sizes());
  const auto [q, k, v] = rows_of_heads(q_in, k_in, v_in);
  const at::Tensor go = grad_out_in.to(at::kFloat).contiguous(), out = out_in.contiguous(), lse = lse_in.contiguous();
  const bool widen = q.scalar_type() == at::kBFloat16;
  at::Tensor dq = at::empty({B, S, H, D}, q.options());
  at::Tensor dk = at::zeros({B, S, H, D}, q.options()), dv = at::zeros({B, S, H, D}, q.options());
  const at::Tensor lens = lengths.contiguous();
  const int64_t* len = lens.data_ptr<int64_t>();
  const KernelTable& table = kernels();
  auto run = [&](auto* qp, auto* kp, auto* vp, auto* dqp, auto* dkp, auto* dvp) {
    at::parallel_for(0, B * H, 1, [&](int64_t t0, int64_t t1) {
      const int64_t base = attention_scratch(S, D);
      std::vector<float> scratch(base + (widen ? 6 * S * D : 0));
      float* wide = scratch.data() + base;   // q, k, v of one head, widened; then its float32 gradients
      float* grads = wide + 3 * S * D;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / H, h = t % H, n = len[b];
        const int64_t row0 = (b * S * H + h) * D;   // (b, 0, h, 0) of a contiguous [B, S, H, D]
        const auto qh = head_rows(qp + b * q.stride(0) + h * q.stride(2), q.stride(1), S, D, wide);
        const auto kh = head_rows(kp + b * k.stride(0) + h * k.stride(2), k.stride(1), n, D, wide + S * D);
        const auto vh = head_rows(vp + b * v.stride(0) + h * v.stride(2), v.stride(1), n, D, wide + 2 * S * D);
        TORCH_INTERNAL_ASSERT(kh.ld == vh.ld);
        // float32 gradients straight into the outputs; bfloat16 ones through [S, D] rows, rounded on the way out
        float* gq = widen ? grads : reinterpret_cast<float*>(dqp) + row0;
        float* gk = widen ? grads + S * D : reinterpret_cast<float*>(dkp) + row0;
        float* gv = widen ? grads + 2 * S * D : reinterpret_cast<float*>(dvp) + row0;
        const int64_t ldg = widen ? D : H * D;
        table.attention_backward_f32(qh.rows, qh.ld, kh.rows, vh.rows, kh.ld, out.data_ptr<float>() + row0,
                                     go.data_ptr<float>() + row0, H * D, lse.data_ptr<float>() + (b * H + h) * S, S, n,
                                     D, static_cast<float>(scale), gq, ldg, gk, gv, ldg, scratch.data());
        if (widen) {
          auto* dq16 = reinterpret_cast<at::BFloat16*>(dqp) + row0;
          auto* dk16 = reinterpret_cast<at::BFloat16*>(dkp) + row0;
          auto* dv16 = reinterpret_cast<at::BFloat16*>(dvp) + row0;
          for (int64_t i = 0; i < S; ++i)
            for (int64_t c = 0; c < D; ++c) dq16[i * H * D + c] = static_cast<at::BFloat16>(gq[i * D + c]);
          for (int64_t i = 0; i < n; ++i)
            for (int64_t c = 0; c < D; ++c) {
              dk16[i * H * D + c] = static_cast<at::BFloat16>(gk[i * D + c]);
              dv16[i * H * D + c] = static_cast<at::BFloat16>(gv[i * D + c]);
            }
        }
      }
    });
  };
  if (widen)
    run(q.data_ptr<at::BFloat16>(), k.data_ptr<at::BFloat16>(), v.data_ptr<at::BFloat16>(), dq.data_ptr<at::BFloat16>(),
        dk.data_ptr<at::BFloat16>(), dv.data_ptr<at::BFloat16>());
  else
    run(q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), dq.data_ptr<float>(), dk.data_ptr<float>(),
        dv.data_ptr<float>());
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(kprune, CPU, m) {
  m.impl("attention", &attention_cpu);
  m.impl("attention_backward", &attention_backward_cpu);
}

}  // namespace cpu
}  // namespace kprune
