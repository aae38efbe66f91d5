"""Typed entry points of the kprune ops.

Each function calls the compiled op (torch.ops.kprune.<name>) when the extension is loaded and has a
kernel for the inputs' device, and the PyTorch reference (``kprune_ext.reference``) otherwise, or
whenever ``KPRUNE_DISABLE_EXT=1`` is set. Signatures and semantics are those of the references.
The masked sublayers' compiled versions give gradients for x/context and mask only (never the weights).
"""
from __future__ import annotations

import torch

from kprune_ext import _loader, reference

_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta"}
_has_kernel_cache: dict[tuple[str, str], bool] = {}


def _compiled(name: str, device: torch.device) -> bool:
    """True when torch.ops.kprune.<name> should run for tensors on ``device``."""
    if not _loader.EXTENSION_LOADED or _loader.disabled_by_env():
        return False
    key = (name, device.type)
    if key not in _has_kernel_cache:
        dispatch_key = _DISPATCH_KEYS.get(device.type)
        _has_kernel_cache[key] = dispatch_key is not None and (
            dispatch_key == "Meta" or torch._C._dispatch_has_kernel_for_dispatch_key(f"kprune::{name}", dispatch_key)
        )
    return _has_kernel_cache[key]


def _check_activation(activation: str) -> None:
    if activation not in reference.ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not supported; expected one of {reference.ACTIVATIONS}")


_PRECISIONS = {"auto": 0, "float32": 32, "float64": 64}


def accumulate_importance(
    act: torch.Tensor,
    grad: torch.Tensor,
    offsets: torch.Tensor,
    grad_sq_sum: torch.Tensor,
    act_sq_sum: torch.Tensor,
) -> None:
    """grad_sq_sum[u] += sum_g (sum_{t in g} act*grad)^2; act_sq_sum[u] += sum_t act^2 (see reference)."""
    if _compiled("accumulate_importance", act.device):
        torch.ops.kprune.accumulate_importance.default(act, grad, offsets, grad_sq_sum, act_sq_sum)
    else:
        reference.accumulate_importance(act, grad, offsets, grad_sq_sum, act_sq_sum)


def accumulate_group_sums(
    act: torch.Tensor,
    grad: torch.Tensor,
    offsets: torch.Tensor,
    segment_group: torch.Tensor,
    group_sums: torch.Tensor,
    act_sq_sum: torch.Tensor,
) -> None:
    """group_sums[segment_group[s], u] += sum_{t in segment s} act*grad (float64); act_sq_sum[u] += sum_t act^2.

    Segments (offsets [S + 1]) are the samples of a compute batch, segment_group [S] their logical
    gradient groups (see reference)."""
    if _compiled("accumulate_group_sums", act.device):
        torch.ops.kprune.accumulate_group_sums.default(act, grad, offsets, segment_group, group_sums, act_sq_sum)
    else:
        reference.accumulate_group_sums(act, grad, offsets, segment_group, group_sums, act_sq_sum)


def gram_accumulate(
    a: torch.Tensor,
    b: torch.Tensor,
    columns: torch.Tensor | None,
    gram: torch.Tensor,
    cross: torch.Tensor,
) -> None:
    """gram += A^T A, cross += A^T b with A = a[:, columns], in the accumulators' type (float32 or float64; see
    reference)."""
    if _compiled("gram_accumulate", a.device):
        torch.ops.kprune.gram_accumulate.default(a, b, columns, gram, cross)
    else:
        reference.gram_accumulate(a, b, columns, gram, cross)


def solve_damped(
    gram: torch.Tensor,
    rhs: torch.Tensor,
    damping: float = 1e-4,
    max_tries: int = 8,
    *,
    precision: str = "auto",
) -> torch.Tensor:
    """Solve (G + lambda I) X = R by Cholesky with escalating damping (see reference).

    precision: "auto" factors in float64 up to k = 1024 unknowns and in float32 above (as accurate as
    torch.linalg.lstsq in float32, about twice as fast); "float64" / "float32" force one. The
    reference always uses float64.
    """
    if precision not in _PRECISIONS:
        raise ValueError(f"precision {precision!r} is not supported; expected one of {tuple(_PRECISIONS)}")
    if _compiled("solve_damped", gram.device):
        return torch.ops.kprune.solve_damped.default(gram, rhs, float(damping), int(max_tries), _PRECISIONS[precision])
    return reference.solve_damped(gram, rhs, damping, max_tries)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x weight^T + bias, as F.linear (and differentiable in all three): the compiled op, whose float32
    CPU GEMMs run on the backend of :func:`gemm_backend` (csrc/cpu/gemm.h), unless autocast is on, where
    F.linear casts."""
    if _compiled("linear", x.device):
        if not torch.is_autocast_enabled(x.device.type):
            return torch.ops.kprune.linear.default(x, weight, bias)
        if x.device.type == "cpu" and torch.get_autocast_dtype("cpu") == torch.bfloat16:
            # what autocast's F.linear computes (bf16 operands), through the op: its bf16 GEMMs run on rows
            # padded to a few shapes, so oneDNN does not compile a kernel for every batch (csrc/cpu/gemm_cpu.cpp)
            low = torch.bfloat16
            with torch.autocast("cpu", enabled=False):
                return torch.ops.kprune.linear.default(x.to(low), weight.to(low), None if bias is None else bias.to(low))
    return reference.linear(x, weight, bias)


def attention_compiled(device: torch.device) -> bool:
    """True when :func:`attention` runs the compiled kernel for tensors on ``device`` (else the reference)."""
    return _compiled("attention", device)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor,
              scale: float) -> torch.Tensor:
    """Softmax attention of each sequence over its real keys only (see reference): q, k, v all float32 or all
    bfloat16 [batch, seq, heads, head_size] with stride 1 along head_size, lengths int64 [batch]; the output is
    float32 and the sums run in float32 either way (bf16 inputs are widened exactly, their gradients come back
    in bf16, rounded as a cast would). Differentiable in q, k, v. The compiled kernel never reads a padded key
    and sums in an order set by the real length, so a real token's output and gradients do not depend on the
    padded length of its batch."""
    if _compiled("attention", q.device):
        return torch.ops.kprune.attention.default(q, k, v, lengths, float(scale))[0]
    return reference.attention(q, k, v, lengths, scale)


GEMM_BACKENDS = _loader.GEMM_ENV_VALUES


def gemm_backend() -> str:
    """The backend of the compiled ops' float32 CPU GEMMs: "onednn", or "aten" (torch's at::mm: MKL).
    By default ("auto") oneDNN on x86 CPUs not made by Intel (there MKL's sgemm leaves AVX-512 unused),
    MKL on Intel's; ``KPRUNE_GEMM=onednn|aten`` at start or :func:`set_gemm_backend` choose."""
    return torch.ops.kprune.gemm_backend() if _loader.EXTENSION_LOADED else "aten"


def set_gemm_backend(name: str, min_macs: int | None = None) -> str:
    """Choose the float32 CPU GEMM backend ("auto", "onednn" or "aten"; ``KPRUNE_GEMM`` at start does the
    same) and, if given, the size (rows x k x n multiply-adds, default 2**25) from which a GEMM goes to
    oneDNN; returns the backend now in use ("aten" when this torch lacks oneDNN's matmul)."""
    if name not in GEMM_BACKENDS:
        raise ValueError(f"gemm backend {name!r} is not supported; expected one of {GEMM_BACKENDS}")
    if min_macs is not None and (not isinstance(min_macs, int) or min_macs < 0):
        raise ValueError(f"min_macs must be an int >= 0, got {min_macs!r}")
    if not _loader.EXTENSION_LOADED:
        return "aten"
    return torch.ops.kprune.set_gemm_backend(name, -1 if min_macs is None else min_macs)


def gemm_min_macs() -> int | None:
    """The size (multiply-adds) from which a float32 CPU GEMM goes to oneDNN; None without the extension."""
    return torch.ops.kprune.gemm_min_macs() if _loader.EXTENSION_LOADED else None


def masked_ffn(
    x: torch.Tensor,
    w_in: torch.Tensor,
    b_in: torch.Tensor | None,
    w_out: torch.Tensor,
    b_out: torch.Tensor | None,
    kept: torch.Tensor,
    mask: torch.Tensor,
    activation: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FFN restricted to the kept neurons: returns (out [tokens, d], act [tokens, k]) (see reference)."""
    _check_activation(activation)
    if _compiled("masked_ffn", x.device):
        if torch.is_grad_enabled() and (x.requires_grad or mask.requires_grad):
            # keeps the pre-activation for the backward instead of recomputing a GEMM
            out, act, _ = torch.ops.kprune.masked_ffn_with_preact.default(x, w_in, b_in, w_out, b_out, kept, mask, activation)
            return out, act
        return torch.ops.kprune.masked_ffn.default(x, w_in, b_in, w_out, b_out, kept, mask, activation)
    return reference.masked_ffn(x, w_in, b_in, w_out, b_out, kept, mask, activation)


def masked_attention_output(
    context: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor | None,
    kept_heads: torch.Tensor,
    mask: torch.Tensor,
    head_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output projection restricted to the kept heads: (out, kept contexts) (see reference)."""
    if _compiled("masked_attention_output", context.device):
        return torch.ops.kprune.masked_attention_output.default(context, w_out, b_out, kept_heads, mask, int(head_size))
    return reference.masked_attention_output(context, w_out, b_out, kept_heads, mask, head_size)


def activation_backward(
    preact: torch.Tensor,
    bias: torch.Tensor | None,
    grad_act: torch.Tensor,
    activation: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(act, grad_preact) = (f(preact + bias), grad_act * f'(preact + bias)) in one pass (see reference)."""
    _check_activation(activation)
    if _compiled("activation_backward", preact.device):
        return torch.ops.kprune.activation_backward.default(preact, bias, grad_act, activation)
    return reference.activation_backward(preact, bias, grad_act, activation)


def activation_math(x: torch.Tensor, activation: str, derivative: bool = False) -> torch.Tensor:
    """The kernels' shared host/device activation math (float32/float64), for tests."""
    _check_activation(activation)
    return torch.ops.kprune.activation_math.default(x, activation, bool(derivative))


def cpu_capability() -> str | None:
    """Instruction set of the CPU kernels in use (avx512, avx2, generic), None without the extension."""
    return torch.ops.kprune.cpu_capability() if _loader.EXTENSION_LOADED else None


def set_cpu_capability(name: str) -> str:
    """Cap the CPU kernels' instruction set (tests/benchmarks); returns the one now in use."""
    return torch.ops.kprune.set_cpu_capability(name)


# ---- fake (meta) kernels and autograd of the compiled ops -------------------------------------

def _register() -> None:
    lib = "kprune::"

    @torch.library.register_fake(lib + "accumulate_importance")
    def _(act, grad, offsets, grad_sq_sum, act_sq_sum):
        torch._check(act.dim() == 2, lambda: f"act must be [tokens, units], got {tuple(act.shape)}")
        torch._check(grad.dim() == 2 and grad.shape[0] == act.shape[0] and grad.shape[1] == act.shape[1],
                     lambda: f"grad must match act {tuple(act.shape)}, got {tuple(grad.shape)}")
        torch._check(offsets.dim() == 1 and offsets.dtype == torch.int64, lambda: "offsets must be 1-D int64")
        for out in (grad_sq_sum, act_sq_sum):
            torch._check(out.dim() == 1 and out.shape[0] == act.shape[1] and out.dtype == torch.float32,
                         lambda: f"grad_sq_sum and act_sq_sum must be float32 [{act.shape[1]}]")

    @torch.library.register_fake(lib + "accumulate_group_sums")
    def _(act, grad, offsets, segment_group, group_sums, act_sq_sum):
        torch._check(act.dim() == 2, lambda: f"act must be [tokens, units], got {tuple(act.shape)}")
        torch._check(grad.dim() == 2 and grad.shape[0] == act.shape[0] and grad.shape[1] == act.shape[1],
                     lambda: f"grad must match act {tuple(act.shape)}, got {tuple(grad.shape)}")
        torch._check(offsets.dim() == 1 and offsets.dtype == torch.int64, lambda: "offsets must be 1-D int64")
        torch._check(segment_group.dim() == 1 and segment_group.dtype == torch.int64
                     and segment_group.shape[0] == offsets.shape[0] - 1,
                     lambda: "segment_group must be 1-D int64 with one group per segment")
        torch._check(group_sums.dim() == 2 and group_sums.shape[1] == act.shape[1] and group_sums.dtype == torch.float64,
                     lambda: f"group_sums must be float64 [groups, {act.shape[1]}]")
        torch._check(act_sq_sum.dim() == 1 and act_sq_sum.shape[0] == act.shape[1] and act_sq_sum.dtype == torch.float32,
                     lambda: f"act_sq_sum must be float32 [{act.shape[1]}]")

    @torch.library.register_fake(lib + "gram_accumulate")
    def _(a, b, columns, gram, cross):
        torch._check(a.dim() == 2 and b.dim() == 2 and a.shape[0] == b.shape[0], lambda: "a, b: [tokens, *]")
        k = a.shape[1] if columns is None else columns.shape[0]
        torch._check(gram.dim() == 2 and gram.shape[0] == k and gram.shape[1] == k, lambda: f"gram must be [{k}, {k}]")
        torch._check(cross.dim() == 2 and cross.shape[0] == k and cross.shape[1] == b.shape[1],
                     lambda: f"cross must be [{k}, {b.shape[1]}]")

    @torch.library.register_fake(lib + "solve_damped")
    def _(gram, rhs, damping=1e-4, max_tries=8, precision=0):
        torch._check(gram.dim() >= 2 and gram.shape[-1] == gram.shape[-2], lambda: "gram must be [..., k, k]")
        torch._check(rhs.dim() >= 2 and rhs.shape[-2] == gram.shape[-1], lambda: "rhs must be [..., k, m]")
        batch = torch.broadcast_shapes(gram.shape[:-2], rhs.shape[:-2])
        return rhs.new_empty((*batch, rhs.shape[-2], rhs.shape[-1]), dtype=torch.float32)

    def _ffn_checks(x, w_in, w_out, kept, mask):
        torch._check(x.dim() == 2 and w_in.dim() == 2 and w_in.shape[1] == x.shape[1], lambda: "w_in must be [F, d]")
        torch._check(w_out.dim() == 2 and w_out.shape[1] == w_in.shape[0], lambda: "w_out must be [d_out, F]")
        torch._check(kept.dim() == 1 and mask.dim() == 1 and mask.shape[0] == kept.shape[0], lambda: "mask must be [k]")

    @torch.library.register_fake(lib + "masked_ffn")
    def _(x, w_in, b_in, w_out, b_out, kept, mask, activation):
        _ffn_checks(x, w_in, w_out, kept, mask)
        return x.new_empty((x.shape[0], w_out.shape[0])), x.new_empty((x.shape[0], kept.shape[0]))

    @torch.library.register_fake(lib + "masked_ffn_with_preact")
    def _(x, w_in, b_in, w_out, b_out, kept, mask, activation):
        _ffn_checks(x, w_in, w_out, kept, mask)
        return (x.new_empty((x.shape[0], w_out.shape[0])), x.new_empty((x.shape[0], kept.shape[0])),
                x.new_empty((x.shape[0], kept.shape[0])))

    @torch.library.register_fake(lib + "masked_ffn_backward")
    def _(grad_out, grad_act, x, w_in, b_in, w_out, kept, mask, act, activation, need_x, need_mask, preact=None):
        _ffn_checks(x, w_in, w_out, kept, mask)
        return (x.new_empty(x.shape) if need_x else x.new_empty((0,)),
                mask.new_empty(mask.shape) if need_mask else mask.new_empty((0,)))

    def _attention_checks(context, w_out, kept_heads, mask, head_size):
        torch._check(context.dim() == 2 and w_out.dim() == 2 and w_out.shape[1] == context.shape[1],
                     lambda: "w_out must be [d, heads * head_size]")
        torch._check(head_size > 0, lambda: "head_size must be positive")
        torch._check(kept_heads.dim() == 1 and mask.dim() == 1 and mask.shape[0] == kept_heads.shape[0],
                     lambda: "mask must be [k]")

    @torch.library.register_fake(lib + "masked_attention_output")
    def _(context, w_out, b_out, kept_heads, mask, head_size):
        _attention_checks(context, w_out, kept_heads, mask, head_size)
        return (context.new_empty((context.shape[0], w_out.shape[0])),
                context.new_empty((context.shape[0], kept_heads.shape[0] * head_size)))

    @torch.library.register_fake(lib + "masked_attention_output_backward")
    def _(grad_out, grad_act, context, w_out, kept_heads, mask, act, head_size, need_context, need_mask):
        _attention_checks(context, w_out, kept_heads, mask, head_size)
        return (context.new_empty(context.shape) if need_context else context.new_empty((0,)),
                mask.new_empty(mask.shape) if need_mask else mask.new_empty((0,)))

    @torch.library.register_fake(lib + "activation_backward")
    def _(preact, bias, grad_act, activation):
        torch._check(preact.dim() == 2, lambda: f"preact must be [tokens, units], got {tuple(preact.shape)}")
        torch._check(grad_act.shape == preact.shape, lambda: f"grad_act must match preact {tuple(preact.shape)}")
        torch._check(bias is None or (bias.dim() == 1 and bias.shape[0] == preact.shape[1]),
                     lambda: f"bias must be [{preact.shape[1]}]")
        return torch.empty_like(preact, memory_format=torch.contiguous_format), \
            torch.empty_like(preact, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + "activation_math")
    def _(x, activation, derivative):
        return torch.empty_like(x)

    def _ffn_setup(ctx, inputs, output):
        x, w_in, b_in, w_out, _b_out, kept, mask, activation = inputs
        preact = output[2] if len(output) > 2 else None
        if preact is not None:
            ctx.mark_non_differentiable(preact)
        ctx.save_for_backward(x, w_in, b_in, w_out, kept, mask, output[1], preact)
        ctx.activation = activation

    def _ffn_backward(ctx, grad_out, grad_act, _grad_preact=None):
        x, w_in, b_in, w_out, kept, mask, act, preact = ctx.saved_tensors
        need_x, need_mask = ctx.needs_input_grad[0], ctx.needs_input_grad[6]
        if not (need_x or need_mask):
            return (None,) * 8
        if grad_out is None:
            grad_out = x.new_zeros((x.shape[0], w_out.shape[0]))
        grad_x, grad_mask = torch.ops.kprune.masked_ffn_backward.default(
            grad_out, grad_act, x, w_in, b_in, w_out, kept, mask, act, ctx.activation, need_x, need_mask, preact)
        return (grad_x if need_x else None, None, None, None, None, None, grad_mask if need_mask else None, None)

    torch.library.register_autograd(lib + "masked_ffn", _ffn_backward, setup_context=_ffn_setup)
    torch.library.register_autograd(lib + "masked_ffn_with_preact", _ffn_backward, setup_context=_ffn_setup)

    def _attention_setup(ctx, inputs, output):
        context, w_out, _b_out, kept_heads, mask, head_size = inputs
        ctx.save_for_backward(context, w_out, kept_heads, mask, output[1])
        ctx.head_size = head_size

    def _attention_backward(ctx, grad_out, grad_act):
        context, w_out, kept_heads, mask, act = ctx.saved_tensors
        need_context, need_mask = ctx.needs_input_grad[0], ctx.needs_input_grad[4]
        if not (need_context or need_mask):
            return (None,) * 6
        if grad_out is None:
            grad_out = context.new_zeros((context.shape[0], w_out.shape[0]))
        grad_context, grad_mask = torch.ops.kprune.masked_attention_output_backward.default(
            grad_out, grad_act, context, w_out, kept_heads, mask, act, ctx.head_size, need_context, need_mask)
        return (grad_context if need_context else None, None, None, None, grad_mask if need_mask else None, None)

    torch.library.register_autograd(lib + "masked_attention_output", _attention_backward, setup_context=_attention_setup)

    @torch.library.register_fake(lib + "attention")
    def _(q, k, v, lengths, scale):
        torch._check(q.dim() == 4 and k.shape == q.shape and v.shape == q.shape,
                     lambda: "attention: q, k, v [batch, seq, heads, head_size] of one shape")
        torch._check(q.dtype in (torch.float32, torch.bfloat16) and k.dtype == q.dtype and v.dtype == q.dtype,
                     lambda: "attention: q, k, v all float32 or all bfloat16")
        return q.new_empty(q.shape, dtype=torch.float32), q.new_empty((q.shape[0], q.shape[2], q.shape[1]),
                                                                       dtype=torch.float32)

    @torch.library.register_fake(lib + "attention_backward")
    def _(grad_out, q, k, v, out, lse, lengths, scale):
        return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)

    def _attention_core_setup(ctx, inputs, output):
        q, k, v, lengths, scale = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(q, k, v, output[0], output[1], lengths)
        ctx.scale = scale

    def _attention_core_backward(ctx, grad_out, _grad_lse):
        q, k, v, out, lse, lengths = ctx.saved_tensors
        if grad_out is None or not any(ctx.needs_input_grad[:3]):
            return (None,) * 5
        dq, dk, dv = torch.ops.kprune.attention_backward.default(grad_out, q, k, v, out, lse, lengths, ctx.scale)
        need = ctx.needs_input_grad
        return (dq if need[0] else None, dk if need[1] else None, dv if need[2] else None, None, None)

    torch.library.register_autograd(lib + "attention", _attention_core_backward, setup_context=_attention_core_setup)

    @torch.library.register_fake(lib + "linear")
    def _(x, w, bias=None):
        torch._check(w.dim() == 2 and x.dim() >= 1 and x.shape[-1] == w.shape[1], lambda: "linear: x [..., k], w [n, k]")
        return x.new_empty((*x.shape[:-1], w.shape[0]))

    def _linear_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1])

    def _linear_backward(ctx, grad):
        x, w = ctx.saved_tensors
        need = ctx.needs_input_grad   # (x, w) or (x, w, bias): as the call passed them
        flat = grad.flatten(0, -2) if grad.dim() > 1 else grad[None]
        grad_x = torch.ops.kprune.linear.default(grad, w.t()) if need[0] else None
        x_flat = x.flatten(0, -2) if x.dim() > 1 else x[None]
        grad_w = torch.ops.kprune.linear.default(flat.t(), x_flat.t()) if need[1] else None
        return (grad_x, grad_w, flat.sum(0) if need[2] else None) if len(need) == 3 else (grad_x, grad_w)

    torch.library.register_autograd(lib + "linear", _linear_backward, setup_context=_linear_setup)


if _loader.EXTENSION_LOADED:
    _register()
