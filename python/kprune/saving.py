"""A sublayer's forward that keeps what its backward needs, so the backward recomputes nothing.

The knowledge pass runs sublayers k..2L-1 forward without a graph, then backward one sublayer at a
time (:func:`kprune.sublayers.sublayer_backward`). Without more than the sublayer's input, that
backward runs the part below the output projection again: the Q/K/V projections and attention, or
the FFN's first GEMM, about 7/24 of a forward-and-backward pass. :func:`run_sublayer_saving` keeps
instead the attention's autograd graph (Q, K, V, the context and its statistics) or the FFN's
pre-activation, and :class:`SaveBudget` bounds what one batch keeps that way, whatever the depth:
the sublayers that do not fit recompute as before.
"""
from __future__ import annotations

import torch

from kprune.adapters import EncoderAdapter
from kprune.precision import autocast_weight
from kprune.sublayers import SublayerOutput, project, run_sublayer, sublayer_act
from kprune_ext import ops


def saved_bytes(adapter: EncoderAdapter, k: int, x: torch.Tensor) -> int:
    """Bytes :func:`run_sublayer_saving` keeps for sublayer k on input x [batch, seq, d]: the attention's
    graph holds Q, K, V and the context (4 x [tokens, heads * head_size]); the FFN its pre-activation."""
    view = adapter.layer(k // 2)
    tokens = x.shape[0] * x.shape[1]
    size = max(x.element_size(), 4)
    extra = tokens * x.shape[-1] * size if view.attn_input_norm is not None else 0   # a pre-norm layer's normed input
    if k % 2 == 0:
        return 4 * tokens * view.num_heads * view.head_size * size + extra
    if not view.plain_ffn:   # value, gate, activation and act of a gated FFN
        return 4 * tokens * view.num_neurons * size + extra
    return tokens * view.num_neurons * size


class SaveBudget:
    """What one batch's forward may keep for its backward: at most ``limit`` bytes, spent bottom up."""

    def __init__(self, limit_mb: float):
        self.limit = float(limit_mb) * 2 ** 20
        self.spent = 0

    def take(self, nbytes: int) -> bool:
        """Reserve ``nbytes`` if they still fit; True when reserved."""
        if self.spent + nbytes > self.limit:
            return False
        self.spent += nbytes
        return True


def run_sublayer_saving(adapter: EncoderAdapter, k: int, x: torch.Tensor, key_mask: torch.Tensor):
    """:func:`kprune.sublayers.run_sublayer` (called without gradients) that also returns what
    ``sublayer_backward(..., saved=...)`` needs: (leaf input, act with its graph) for attention and for
    gated or pre-norm FFNs, the pre-activation without bias [tokens, units] for a plain FFN; None for a
    sublayer without units."""
    view = adapter.layer(k // 2)
    attention = k % 2 == 0
    if (view.num_heads if attention else view.num_neurons) == 0:
        return run_sublayer(adapter, k, x, key_mask), None
    if attention or not view.plain_ffn:   # keep the graph from a leaf input to the act
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            graph_act = sublayer_act(adapter, k, leaf, key_mask)
        act = graph_act.detach()
        out_proj, norm = (view.attn_out, view.attn_norm) if attention else (view.ffn_out, view.ffn_norm)
        pre = x + project(out_proj, act)
        return SublayerOutput(act, pre, norm(pre)), (leaf, graph_act)
    preact = ops.linear(x.reshape(-1, x.shape[-1]), autocast_weight(view.ffn_in.weight))
    bias = view.ffn_in.bias
    act = view.ffn_act(preact if bias is None else preact + bias.to(preact.dtype))
    act = act.view(*x.shape[:-1], act.shape[-1])
    pre = x + project(view.ffn_out, act)
    return SublayerOutput(act, pre, view.ffn_norm(pre)), preact
