"""Pure-PyTorch reference implementations of the kprune ops.

Every function here has the same signature as its compiled counterpart in ``kprune_ext.ops``. They
run when the extension is not built, when ``KPRUNE_DISABLE_EXT=1`` is set, and in tests as the
independent reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")


def apply_activation(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "gelu":
        return F.gelu(x)
    if activation == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if activation == "relu":
        return F.relu(x)
    if activation == "silu":
        return F.silu(x)
    raise ValueError(f"activation {activation!r} is not supported; expected one of {ACTIVATIONS}")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x weight^T + bias."""
    return F.linear(x, weight, bias)


def accumulate_importance(
    act: torch.Tensor,
    grad: torch.Tensor,
    offsets: torch.Tensor,
    grad_sq_sum: torch.Tensor,
    act_sq_sum: torch.Tensor,
) -> None:
    """Add per-group squared mask gradients and per-unit activation energy, in place.

    act, grad: [tokens, units] (fp32/bf16/fp16); offsets: int64 [groups + 1], non-decreasing, token
    ranges of the groups (a sample or a batch). grad_sq_sum, act_sq_sum: fp32 [units].
    grad_sq_sum[u] += sum_g (sum_{t in g} act[t, u] * grad[t, u])^2
    act_sq_sum[u]  += sum_{t in [offsets[0], offsets[-1])} act[t, u]^2
    """
    lengths, lo, hi = _segments(offsets)
    if lengths.numel() and hi > lo:
        a, g = act[lo:hi].float(), grad[lo:hi].float()
        group_ids = torch.repeat_interleave(torch.arange(lengths.numel(), device=act.device), lengths)
        per_group = torch.zeros(lengths.numel(), a.shape[1], dtype=torch.float32, device=act.device)
        per_group.index_add_(0, group_ids, a * g)
        grad_sq_sum.add_(per_group.square().sum(0))
        act_sq_sum.add_(a.square().sum(0))


def _segments(offsets: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(lengths [segments], first token, end token) of contiguous token segments given by offsets."""
    return (offsets[1:] - offsets[:-1]).long(), int(offsets[0]), int(offsets[-1])


def accumulate_group_sums(
    act: torch.Tensor,
    grad: torch.Tensor,
    offsets: torch.Tensor,
    segment_group: torch.Tensor,
    group_sums: torch.Tensor,
    act_sq_sum: torch.Tensor,
) -> None:
    """Add per-group sums of act * grad for groups whose segments are spread over calls, in place.

    act, grad: [tokens, units] (fp32/bf16/fp16/fp64); offsets: int64 [segments + 1], non-decreasing,
    token ranges of the segments (the samples of a compute batch); segment_group: int64 [segments], the
    logical group of each segment, in [0, groups). group_sums: float64 [groups, units];
    act_sq_sum: fp32 [units].
    group_sums[segment_group[s], u] += sum_{t in segment s} act[t, u] * grad[t, u]   (in float64)
    act_sq_sum[u] += sum_{t in [offsets[0], offsets[-1])} act[t, u]^2
    """
    lengths, lo, hi = _segments(offsets)
    if lengths.numel() and hi > lo:
        token_groups = torch.repeat_interleave(segment_group, lengths)
        group_sums.index_add_(0, token_groups, act[lo:hi].double() * grad[lo:hi].double())
        act_sq_sum.add_(act[lo:hi].float().square().sum(0))


def gram_accumulate(
    a: torch.Tensor,
    b: torch.Tensor,
    columns: torch.Tensor | None,
    gram: torch.Tensor,
    cross: torch.Tensor,
) -> None:
    """Accumulate the least-squares statistics of one token chunk, in place, in the accumulators' type.

    a: [tokens, units]; b: [tokens, m]; columns: int64 [k] selecting units of a (None: all).
    gram: [k, k] += A^T A; cross: [k, m] += A^T b, with A = a[:, columns]; gram and cross both float32
    or both float64.
    """
    sel = a if columns is None else a.index_select(1, columns)
    sel = sel.float().to(gram.dtype)
    gram.addmm_(sel.t(), sel)
    cross.addmm_(sel.t(), b.float().to(gram.dtype))


def solve_damped(gram: torch.Tensor, rhs: torch.Tensor, damping: float = 1e-4, max_tries: int = 8) -> torch.Tensor:
    """Solve (G + lambda I) X = R for one or a batch of systems by Cholesky.

    gram: fp32 [..., k, k] symmetric positive semi-definite; rhs: [..., k, m]. lambda starts at
    damping * mean(diag(G)) (or damping when the diagonal is zero) and grows 10x until every factorisation
    succeeds; after max_tries a RuntimeError is raised rather than returning garbage.
    """
    g = gram.double()
    r = rhs.double()
    k = g.shape[-1]
    if k == 0:
        return torch.zeros(rhs.shape, dtype=torch.float32, device=rhs.device)
    diag_mean = g.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True)
    scale = torch.where(diag_mean > 0, diag_mean, torch.ones_like(diag_mean)) * damping
    eye = torch.eye(k, dtype=g.dtype, device=g.device)
    for _ in range(max_tries):
        chol, info = torch.linalg.cholesky_ex(g + scale.unsqueeze(-1) * eye)
        if bool((info == 0).all()):
            return torch.cholesky_solve(r, chol).float()
        scale = torch.where((info != 0).view_as(scale), scale * 10, scale)
    raise RuntimeError(f"damped Cholesky failed after {max_tries} escalations (final damping {scale.max().item():.3g})")


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
    """FFN sublayer restricted to the kept neurons, with the mask on the output projection's input.

    x: [tokens, d]; w_in: [F, d]; b_in: [F]; w_out: [d, F]; b_out: [d]; kept: int64 [k]; mask: [k].
    Returns out = (act(x W_in[kept]^T + b_in[kept]) * mask) W_out[:, kept]^T + b_out  ([tokens, d])
    and act = act(x W_in[kept]^T + b_in[kept]) before the mask ([tokens, k]).
    """
    h = F.linear(x, w_in.index_select(0, kept), None if b_in is None else b_in.index_select(0, kept))
    act = apply_activation(h, activation)
    out = F.linear(act * mask, w_out.index_select(1, kept), b_out)
    return out, act


def activation_backward(
    preact: torch.Tensor,
    bias: torch.Tensor | None,
    grad_act: torch.Tensor,
    activation: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The FFN activation recomputed for a backward, and its gradient.

    preact: [tokens, k] = x W_in^T without the bias; bias: [k] or None; grad_act: [tokens, k], the
    gradient at act. Returns act = f(preact + bias) and grad_preact = grad_act * f'(preact + bias).
    """
    z = preact if bias is None else preact + bias.to(preact.dtype)
    with torch.enable_grad():
        z = z.detach().requires_grad_()
        act = apply_activation(z, activation)
        (grad,) = torch.autograd.grad(act, z, grad_act.to(act.dtype))
    return act.detach(), grad


def masked_attention_output(
    context: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor | None,
    kept_heads: torch.Tensor,
    mask: torch.Tensor,
    head_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output projection restricted to the kept heads, with a per-head mask.

    context: [tokens, H * head_size] concatenated head contexts; w_out: [d, H * head_size];
    kept_heads: int64 [k]; mask: [k]. Returns out = (ctx_kept * mask) W_out[:, kept]^T + b_out
    ([tokens, d]) and the kept contexts before the mask ([tokens, k * head_size]).
    """
    cols = (kept_heads.unsqueeze(1) * head_size + torch.arange(head_size, device=kept_heads.device)).reshape(-1)
    ctx = context.index_select(1, cols)
    scaled = ctx * mask.repeat_interleave(head_size)
    out = F.linear(scaled, w_out.index_select(1, cols), b_out)
    return out, ctx


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor,
              scale: float) -> torch.Tensor:
    """softmax(scale q k^T) v per sequence over its real keys [0, lengths[b]) (a prefix); q, k, v:
    [batch, seq, heads, head_size] -> [batch, seq, heads, head_size], float32 (bf16 inputs are widened). Every
    query row, padded ones too, attends to the real keys; a sequence without keys gives zeros."""
    q, k, v = q.float(), k.float(), v.float()
    out = q.new_zeros(q.shape)
    for b in range(q.shape[0]):
        n = int(lengths[b])
        if n == 0:
            continue
        qb, kb, vb = (t[b].transpose(0, 1) for t in (q, k[:, :n], v[:, :n]))   # [heads, rows, head_size]
        weights = torch.softmax(scale * (qb @ kb.transpose(-1, -2)), dim=-1)
        out[b] = (weights @ vb).transpose(0, 1)
    return out
