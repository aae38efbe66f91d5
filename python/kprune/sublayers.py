"""Functional forward of one sublayer at a time, on the weights of an adapted model.

Sublayer k of an L-layer encoder is layer k // 2's attention (k even) or FFN (k odd). Each call
returns the input of the output projection (``act``: concatenated head contexts or FFN
activations) and the pre-LayerNorm output ``x + sublayer(x)``; the caller applies the norm. This is
what lets the pruning loop run only the sublayers it needs and capture the statistics it measures.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import kprune_ext
from kprune.adapters import EncoderAdapter, LayerView
from kprune.precision import autocast_weight
from kprune_ext import ops


def project(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x); a plain nn.Linear through ``kprune_ext.ops.linear`` (under autocast with the weight's
    cached cast, :func:`kprune.precision.autocast_weight`)."""
    if type(module) is torch.nn.Linear:
        return ops.linear(x, autocast_weight(module.weight), module.bias)
    return module(x)


@dataclass
class SublayerOutput:
    act: torch.Tensor        # [batch, seq, units * width] input of the output projection
    pre_norm: torch.Tensor   # [batch, seq, d] residual + sublayer output, before LayerNorm
    output: torch.Tensor     # [batch, seq, d] after LayerNorm


def prefix_lengths(key_mask: torch.Tensor) -> torch.Tensor | None:
    """Real tokens per sequence [batch] when every row of key_mask [batch, seq] is a prefix (right
    padding, as kprune's batches are), else None."""
    lengths = key_mask.sum(1)
    prefix = torch.arange(key_mask.shape[1], device=key_mask.device)[None, :] < lengths[:, None]
    return lengths if torch.equal(prefix, key_mask) else None


def attention_context(view: LayerView, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Concatenated head contexts [batch, seq, heads * head_size]; key_mask: [batch, seq] bool."""
    batch, seq, _ = x.shape
    heads = view.num_heads
    if heads == 0:
        return x.new_zeros(batch, seq, 0)
    if view.context is not None:   # the family's own attention maths (DeBERTa's disentangled attention)
        return view.context(x, key_mask)
    lengths = None
    if view.attention_inputs is not None:   # the family's own (ModernBERT: fused QKV, rotary, local window)
        q, k, v, mask = view.attention_inputs(x, key_mask)
    else:
        shape = (batch, seq, heads, view.head_size)
        if torch.is_autocast_enabled(x.device.type):   # one cast of the input for the three projections
            x = x.to(torch.get_autocast_dtype(x.device.type))
        q, k, v = (project(proj, x).view(shape) for proj in (view.query, view.key, view.value))
        if view.position_bias is None and ops.attention_compiled(x.device):
            lengths = prefix_lengths(key_mask)
        if lengths is None:
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            mask = key_mask[:, None, None, :]
    if lengths is not None:
        # the compiled kernel over each sequence's real keys: [batch, seq, heads, head_size] in and out (no
        # transposes), float32 sums under autocast too (it widens the bf16 projections itself, without copies),
        # and a real token's rows do not depend on its batch's padding
        wide = (q, k, v) if q.dtype in (torch.float32, torch.bfloat16) else (q.float(), k.float(), v.float())
        with torch.autocast(x.device.type, enabled=False):
            ctx = ops.attention(*wide, lengths, view.head_size ** -0.5)
        return ctx.to(q.dtype).view(batch, seq, heads * view.head_size)
    if view.position_bias is not None:   # an additive bias per head (the layer's slices of a shared table)
        bias = view.position_bias(seq).to(q.dtype)
        mask = bias.masked_fill(~mask, float("-inf"))
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        # under autocast the attention itself runs in float32, the projections stay in bf16: aten's bf16 flash
        # attention backward on CPU is several times slower than float32, and its forward, no faster at GLUE
        # lengths, sums a row otherwise for another padded length (benchmarks/bench_attention.py)
        with torch.autocast("cpu", enabled=False):
            ctx = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                 attn_mask=mask if mask.dtype == torch.bool else mask.float()).to(q.dtype)
    else:
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return ctx.transpose(1, 2).reshape(batch, seq, heads * view.head_size)


def run_sublayer(adapter: EncoderAdapter, k: int, x: torch.Tensor, key_mask: torch.Tensor) -> SublayerOutput:
    view = adapter.layer(k // 2)
    attention = k % 2 == 0
    if not attention and kprune_ext.EXTENSION_LOADED and not torch.is_grad_enabled() and view.num_neurons > 0 \
            and view.plain_ffn and not torch.is_autocast_enabled(x.device.type):
        out, act = fused_ffn(view, x, adapter.activation)
    else:
        act = sublayer_act(adapter, k, x, key_mask)
        out = project(view.attn_out if attention else view.ffn_out, act)
    pre = x + out
    return SublayerOutput(act, pre, (view.attn_norm if attention else view.ffn_norm)(pre))


def sublayer_act(adapter: EncoderAdapter, k: int, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Only the input of sublayer k's output projection (no output GEMM, no norm after it; a pre-norm
    sublayer reads its normed input)."""
    view = adapter.layer(k // 2)
    input_norm = view.attn_input_norm if k % 2 == 0 else view.ffn_input_norm
    if input_norm is not None:
        x = input_norm(x)
    if k % 2 == 0:
        return attention_context(view, x, key_mask)
    if view.gated:
        value, gate = project(view.ffn_in, x).chunk(2, dim=-1)
        return view.ffn_act(value) * gate
    return view.ffn_act(project(view.ffn_in, x))


def sublayer_output(adapter: EncoderAdapter, k: int, pre_norm: torch.Tensor) -> torch.Tensor:
    """Sublayer k's output (the input of sublayer k + 1) from its pre-LayerNorm sum, as the forward made it."""
    view = adapter.layer(k // 2)
    with torch.no_grad():
        return (view.attn_norm if k % 2 == 0 else view.ffn_norm)(pre_norm)


def norm_backward(norm: torch.nn.Module, pre_norm: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """Gradient at the input of a LayerNorm from the gradient at its output."""
    if isinstance(norm, torch.nn.Identity):   # pre-norm layers: nothing after the residual sum
        return grad_output
    with torch.enable_grad():
        z = pre_norm.detach().requires_grad_()
        (grad,) = torch.autograd.grad(norm(z), z, grad_output)
    return grad


def sublayer_backward(adapter: EncoderAdapter, k: int, x: torch.Tensor, pre_norm: torch.Tensor, key_mask: torch.Tensor,
                      grad_output: torch.Tensor, act: torch.Tensor | None = None, need_input_grad: bool = True,
                      saved=None):
    """Backward through sublayer k from the gradient at its output, given its input x and the
    pre-LayerNorm sum saved by the forward: returns (act, grad at act, grad at x or None).

    The output projection is never recomputed (its input gradient is one GEMM with the weight), so
    only the part of the sublayer below the act runs again, and nothing at all when ``act`` (from
    the forward) is given and no input gradient is needed, or when ``saved`` holds what
    :func:`kprune.saving.run_sublayer_saving` kept.
    """
    view = adapter.layer(k // 2)
    attention = k % 2 == 0
    grad_pre = norm_backward(view.attn_norm if attention else view.ffn_norm, pre_norm, grad_output)
    out_proj = view.attn_out if attention else view.ffn_out
    grad_act = ops.linear(grad_pre, autocast_weight(out_proj.weight).t())
    if grad_act.shape[-1] == 0:        # no units left: the sublayer is residual + bias
        return grad_act, grad_act, grad_pre if need_input_grad else None
    if not need_input_grad:
        return (act if act is not None else sublayer_act(adapter, k, x, key_mask)), grad_act, None
    if attention or not view.plain_ffn:
        with torch.enable_grad():
            xg, ctx = saved if saved is not None else (x.detach().requires_grad_(), None)
            ctx = sublayer_act(adapter, k, xg, key_mask) if ctx is None else ctx
            (grad_x,) = torch.autograd.grad(ctx, xg, grad_act)
        return ctx.detach(), grad_act, grad_pre + grad_x
    # the first GEMM again (no bias) unless saved, then the activation and its backward in one pass
    w_in = autocast_weight(view.ffn_in.weight)
    preact = saved if saved is not None else ops.linear(x.reshape(-1, x.shape[-1]), w_in)
    act, grad_h = ops.activation_backward(preact, view.ffn_in.bias, grad_act.reshape(preact.shape).to(preact.dtype),
                                          adapter.activation)
    grad_x = ops.linear(grad_h, w_in.t()).add_(grad_pre.flatten(0, -2))
    return act.view_as(grad_act), grad_act, grad_x.view_as(grad_pre)


def fused_ffn(view: LayerView, x: torch.Tensor, activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The FFN through the compiled masked-FFN op (bias and activation fused); no gradients."""
    units = view.num_neurons
    flat = x.reshape(-1, x.shape[-1])
    kept = torch.arange(units, device=x.device)
    mask = torch.ones(units, device=x.device, dtype=x.dtype)
    out, act = ops.masked_ffn(flat, view.ffn_in.weight, view.ffn_in.bias, view.ffn_out.weight, view.ffn_out.bias,
                              kept, mask, activation)
    return out.view_as(x), act.view(*x.shape[:-1], units)


def run_from(adapter: EncoderAdapter, start: int, x: torch.Tensor, key_mask: torch.Tensor,
             keep_acts: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run sublayers start .. 2L-1; returns the last hidden states and, if asked, each act."""
    acts = []
    for k in range(start, 2 * adapter.num_layers):
        out = run_sublayer(adapter, k, x, key_mask)
        if keep_acts:
            acts.append(out.act)
        x = out.output
    return x, acts


def forward_logits(adapter: EncoderAdapter, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
                   key_mask: torch.Tensor) -> torch.Tensor:
    """The whole model, functionally: task logits."""
    hidden, _ = run_from(adapter, 0, adapter.embed(input_ids, token_type_ids), key_mask)
    return adapter.head(hidden, key_mask)
