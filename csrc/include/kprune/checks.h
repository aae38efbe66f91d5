// Argument checks shared by the CPU and the CUDA ATen bindings, so that a bad shape, dtype, device,
// index or offset is the same c10 error (naming the argument and what is accepted) on every device.
// Index and offset values are read on the host: one small copy when they live on a GPU.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <c10/util/Exception.h>

#include <optional>
#include <tuple>

namespace kprune {

inline void check_same_dtype(const at::Tensor& ref, const at::Tensor& t, const char* name) {
  TORCH_CHECK(!t.defined() || t.scalar_type() == ref.scalar_type(), name, " must have dtype ", ref.scalar_type(),
              ", got ", t.scalar_type());
}

// t (when defined) lives on `device`, the device of the op's main input `ref_name`.
inline void check_device(const at::Tensor& t, const at::Device& device, const char* name, const char* ref_name) {
  TORCH_CHECK(!t.defined() || t.device() == device, name, " must be on ", device, " (the device of ", ref_name,
              "), got ", t.device());
}

// index: 1-D int64 on `device`, every value in [0, bound).
inline void check_index(const at::Tensor& index, int64_t bound, const char* name, const at::Device& device,
                        const char* ref_name) {
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == at::kLong, name, " must be a 1-D int64 tensor, got ",
              index.sizes(), " ", index.scalar_type());
  check_device(index, device, name, ref_name);
  if (index.numel() > 0) {
    const auto range = at::aminmax(index);
    const int64_t lo = std::get<0>(range).item<int64_t>(), hi = std::get<1>(range).item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < bound, name, " values must lie in [0, ", bound, "), got [", lo, ", ", hi, "]");
  }
}

// offsets: 1-D int64 [groups + 1] on `device`, non-decreasing, within [0, tokens]. Returns them on the
// host (contiguous), where the CPU kernels read them.
inline at::Tensor check_offsets(const at::Tensor& offsets, int64_t tokens, const at::Device& device) {
  TORCH_CHECK(offsets.dim() == 1 && offsets.numel() >= 1 && offsets.scalar_type() == at::kLong,
              "offsets must be a non-empty 1-D int64 tensor, got ", offsets.sizes(), " ", offsets.scalar_type());
  check_device(offsets, device, "offsets", "act");
  const at::Tensor host = offsets.to(at::kCPU).contiguous();
  const int64_t* o = host.data_ptr<int64_t>();
  const int64_t groups = host.numel() - 1;
  TORCH_CHECK(o[0] >= 0 && o[groups] <= tokens, "offsets must lie in [0, ", tokens, "], got ", o[0], " .. ",
              o[groups]);
  for (int64_t g = 0; g < groups; ++g)
    TORCH_CHECK(o[g] <= o[g + 1], "offsets must be non-decreasing, got ", o[g], " > ", o[g + 1], " at ", g);
  return host;
}

// act [T, U] floating point; grad like act (shape, dtype, device).
inline void check_act_grad(const at::Tensor& act, const at::Tensor& grad) {
  TORCH_CHECK(act.dim() == 2, "act must be [tokens, units], got ", act.sizes());
  TORCH_CHECK(grad.sizes() == act.sizes(), "grad must match act ", act.sizes(), ", got ", grad.sizes());
  TORCH_CHECK(act.is_floating_point(), "act must be floating point, got ", act.scalar_type());
  check_same_dtype(act, grad, "grad");
  check_device(grad, act.device(), "grad", "act");
}

// accumulate_importance(act [T, U], grad [T, U], offsets [G + 1], grad_sq_sum, act_sq_sum fp32 [U]);
// returns the offsets on the host.
inline at::Tensor check_importance(const at::Tensor& act, const at::Tensor& grad, const at::Tensor& offsets,
                                   const at::Tensor& grad_sq_sum, const at::Tensor& act_sq_sum) {
  check_act_grad(act, grad);
  const int64_t units = act.size(1);
  for (const at::Tensor* out : {&grad_sq_sum, &act_sq_sum}) {
    TORCH_CHECK(out->dim() == 1 && out->size(0) == units && out->scalar_type() == at::kFloat,
                "grad_sq_sum and act_sq_sum must be float32 [", units, "], got ", out->sizes(), " ",
                out->scalar_type());
    check_device(*out, act.device(), "grad_sq_sum and act_sq_sum", "act");
  }
  return check_offsets(offsets, act.size(0), act.device());
}

// accumulate_group_sums(act [T, U], grad [T, U], offsets [S + 1], segment_group [S] in [0, G),
// group_sums fp64 [G, U], act_sq_sum fp32 [U]); returns the offsets on the host.
inline at::Tensor check_group_sums(const at::Tensor& act, const at::Tensor& grad, const at::Tensor& offsets,
                                   const at::Tensor& segment_group, const at::Tensor& group_sums,
                                   const at::Tensor& act_sq_sum) {
  check_act_grad(act, grad);
  const int64_t units = act.size(1);
  TORCH_CHECK(group_sums.dim() == 2 && group_sums.size(1) == units && group_sums.scalar_type() == at::kDouble,
              "group_sums must be float64 [groups, ", units, "], got ", group_sums.sizes(), " ",
              group_sums.scalar_type());
  check_device(group_sums, act.device(), "group_sums", "act");
  TORCH_CHECK(act_sq_sum.dim() == 1 && act_sq_sum.size(0) == units && act_sq_sum.scalar_type() == at::kFloat,
              "act_sq_sum must be float32 [", units, "], got ", act_sq_sum.sizes(), " ", act_sq_sum.scalar_type());
  check_device(act_sq_sum, act.device(), "act_sq_sum", "act");
  at::Tensor host = check_offsets(offsets, act.size(0), act.device());
  check_index(segment_group, group_sums.size(0), "segment_group", act.device(), "act");
  TORCH_CHECK(segment_group.numel() == offsets.numel() - 1, "segment_group must have one group per segment (",
              offsets.numel() - 1, "), got ", segment_group.numel());
  return host;
}

// gram_accumulate(a [T, U], b [T, M], columns [k] or None, gram fp32 [k, k], cross fp32 [k, M]); returns k.
inline int64_t check_gram(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& columns,
                          const at::Tensor& gram, const at::Tensor& cross) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(0) == b.size(0),
              "a and b must be [tokens, *] with equal tokens, got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.is_floating_point() && b.is_floating_point(), "a and b must be floating point");
  check_device(b, a.device(), "b", "a");
  const bool has_cols = columns.has_value() && columns->defined();
  if (has_cols) check_index(*columns, a.size(1), "columns", a.device(), "a");
  const int64_t k = has_cols ? columns->numel() : a.size(1);
  const bool accumulator_type = gram.scalar_type() == at::kFloat || gram.scalar_type() == at::kDouble;
  TORCH_CHECK(gram.dim() == 2 && gram.size(0) == k && gram.size(1) == k && accumulator_type,
              "gram must be float32 or float64 [", k, ", ", k, "], got ", gram.sizes(), " ", gram.scalar_type());
  TORCH_CHECK(cross.dim() == 2 && cross.size(0) == k && cross.size(1) == b.size(1) &&
                  cross.scalar_type() == gram.scalar_type(),
              "cross must be ", gram.scalar_type(), " [", k, ", ", b.size(1), "] like gram, got ", cross.sizes(), " ",
              cross.scalar_type());
  check_device(gram, a.device(), "gram", "a");
  check_device(cross, a.device(), "cross", "a");
  return k;
}

struct FfnShapes {
  int64_t tokens, d, units, k;
};

// masked_ffn(x [T, d], w_in [F, d], b_in [F] or None, w_out [d_out, F], kept [k], mask [k]).
inline FfnShapes check_ffn(const at::Tensor& x, const at::Tensor& w_in, const std::optional<at::Tensor>& b_in,
                           const at::Tensor& w_out, const at::Tensor& kept, const at::Tensor& mask) {
  TORCH_CHECK(x.dim() == 2, "x must be [tokens, d], got ", x.sizes());
  TORCH_CHECK(x.is_floating_point(), "x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(w_in.dim() == 2 && w_in.size(1) == x.size(1), "w_in must be [F, ", x.size(1), "], got ", w_in.sizes());
  TORCH_CHECK(w_out.dim() == 2 && w_out.size(1) == w_in.size(0), "w_out must be [d_out, ", w_in.size(0), "], got ",
              w_out.sizes());
  check_same_dtype(x, w_in, "w_in");
  check_same_dtype(x, w_out, "w_out");
  check_device(w_in, x.device(), "w_in", "x");
  check_device(w_out, x.device(), "w_out", "x");
  if (b_in.has_value()) {
    TORCH_CHECK(b_in->dim() == 1 && b_in->size(0) == w_in.size(0), "b_in must be [", w_in.size(0), "], got ",
                b_in->sizes());
    check_device(*b_in, x.device(), "b_in", "x");
  }
  check_index(kept, w_in.size(0), "kept", x.device(), "x");
  TORCH_CHECK(mask.dim() == 1 && mask.size(0) == kept.size(0), "mask must be [", kept.size(0), "], got ",
              mask.sizes());
  check_device(mask, x.device(), "mask", "x");
  return {x.size(0), x.size(1), w_in.size(0), kept.size(0)};
}

// masked_ffn_backward's further inputs: grad_out [T, d_out], act [T, k], preact and grad_act [T, k] or None.
inline void check_ffn_backward(const FfnShapes& s, const at::Tensor& x, const at::Tensor& w_out,
                               const at::Tensor& grad_out, const at::Tensor& act,
                               const std::optional<at::Tensor>& preact, const std::optional<at::Tensor>& grad_act) {
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == s.tokens && grad_out.size(1) == w_out.size(0),
              "grad_out must be [", s.tokens, ", ", w_out.size(0), "], got ", grad_out.sizes());
  TORCH_CHECK(act.dim() == 2 && act.size(0) == s.tokens && act.size(1) == s.k, "act must be [", s.tokens, ", ", s.k,
              "], got ", act.sizes());
  check_device(grad_out, x.device(), "grad_out", "x");
  check_device(act, x.device(), "act", "x");
  if (preact.has_value() && preact->defined()) {
    TORCH_CHECK(preact->sizes() == act.sizes(), "preact must match act ", act.sizes());
    check_device(*preact, x.device(), "preact", "x");
  }
  if (grad_act.has_value() && grad_act->defined()) {
    TORCH_CHECK(grad_act->sizes() == act.sizes(), "grad_act must match act ", act.sizes());
    check_device(*grad_act, x.device(), "grad_act", "x");
  }
}

// masked_attention_output(context [T, H * hs], w_out [d, H * hs], kept_heads [k], mask [k]); returns H.
inline int64_t check_attention(const at::Tensor& context, const at::Tensor& w_out, const at::Tensor& kept_heads,
                               const at::Tensor& mask, int64_t head_size) {
  TORCH_CHECK(context.dim() == 2, "context must be [tokens, heads * head_size], got ", context.sizes());
  TORCH_CHECK(context.is_floating_point(), "context must be floating point, got ", context.scalar_type());
  TORCH_CHECK(head_size > 0 && context.size(1) % head_size == 0, "head_size ", head_size, " must divide ",
              context.size(1));
  TORCH_CHECK(w_out.dim() == 2 && w_out.size(1) == context.size(1), "w_out must be [d, ", context.size(1), "], got ",
              w_out.sizes());
  check_same_dtype(context, w_out, "w_out");
  check_device(w_out, context.device(), "w_out", "context");
  const int64_t heads = context.size(1) / head_size;
  check_index(kept_heads, heads, "kept_heads", context.device(), "context");
  TORCH_CHECK(mask.dim() == 1 && mask.size(0) == kept_heads.size(0), "mask must be [", kept_heads.size(0), "], got ",
              mask.sizes());
  check_device(mask, context.device(), "mask", "context");
  return heads;
}

// masked_attention_output_backward's further inputs: grad_out [T, d], act [T, k * hs], grad_act like act or None.
inline void check_attention_backward(const at::Tensor& context, const at::Tensor& w_out, const at::Tensor& kept_heads,
                                     int64_t head_size, const at::Tensor& grad_out, const at::Tensor& act,
                                     const std::optional<at::Tensor>& grad_act) {
  const int64_t tokens = context.size(0), width = kept_heads.size(0) * head_size;
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == tokens && grad_out.size(1) == w_out.size(0),
              "grad_out must be [", tokens, ", ", w_out.size(0), "], got ", grad_out.sizes());
  TORCH_CHECK(act.dim() == 2 && act.size(0) == tokens && act.size(1) == width, "act must be [", tokens, ", ", width,
              "], got ", act.sizes());
  check_device(grad_out, context.device(), "grad_out", "context");
  check_device(act, context.device(), "act", "context");
  if (grad_act.has_value() && grad_act->defined()) {
    TORCH_CHECK(grad_act->sizes() == act.sizes(), "grad_act must match act ", act.sizes());
    check_device(*grad_act, context.device(), "grad_act", "context");
  }
}

// activation_backward(preact [T, k], bias [k] or None, grad_act [T, k]).
inline void check_activation_backward(const at::Tensor& preact, const std::optional<at::Tensor>& bias,
                                      const at::Tensor& grad_act) {
  TORCH_CHECK(preact.dim() == 2, "preact must be [tokens, units], got ", preact.sizes());
  TORCH_CHECK(preact.is_floating_point(), "preact must be floating point, got ", preact.scalar_type());
  TORCH_CHECK(grad_act.sizes() == preact.sizes(), "grad_act must match preact ", preact.sizes(), ", got ",
              grad_act.sizes());
  check_same_dtype(preact, grad_act, "grad_act");
  check_device(grad_act, preact.device(), "grad_act", "preact");
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == preact.size(1), "bias must be [", preact.size(1), "], got ",
                bias->sizes());
    check_device(*bias, preact.device(), "bias", "preact");
  }
}

// solve_damped(gram [..., k, k], rhs [..., k, m], damping > 0, max_tries >= 1, precision 0/32/64).
inline void check_solve(const at::Tensor& gram, const at::Tensor& rhs, double damping, int64_t max_tries,
                        int64_t precision) {
  TORCH_CHECK(gram.dim() >= 2 && gram.size(-1) == gram.size(-2), "gram must be [..., k, k], got ", gram.sizes());
  TORCH_CHECK(rhs.dim() >= 2 && rhs.size(-2) == gram.size(-1), "rhs must be [..., ", gram.size(-1), ", m], got ",
              rhs.sizes());
  TORCH_CHECK(gram.is_floating_point() && rhs.is_floating_point(), "gram and rhs must be floating point");
  check_device(rhs, gram.device(), "rhs", "gram");
  TORCH_CHECK(max_tries >= 1, "max_tries must be >= 1, got ", max_tries);
  TORCH_CHECK(damping > 0, "damping must be > 0, got ", damping);
  TORCH_CHECK(precision == 0 || precision == 32 || precision == 64, "precision must be 0 (auto), 32 or 64, got ",
              precision);
}

}  // namespace kprune
