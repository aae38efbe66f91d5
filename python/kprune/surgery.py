"""Physical removal of heads and neurons, in place, keeping the model's own class.

Heads: rows of Q, K and V and columns of the attention output projection. Neurons: rows of the
first FFN projection and columns of the second. A layer left with no heads gets a
:class:`HeadlessAttention` in place of its self-attention, so the sublayer is its residual path
(plus the output bias) and LayerNorm, exactly as a fully masked sublayer.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import skip_init

from kprune.adapters import EncoderAdapter
from kprune.modernbert import fused_rows
from kprune.remote_modeling import HeadlessAttention, keep_bias_heads, kept_bias_heads, present, shrink

__all__ = ["HeadlessAttention", "head_columns", "prune_heads", "prune_neurons", "resize_to"]


def _slice_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    weight = linear.weight.detach()
    bias = None if linear.bias is None else linear.bias.detach()
    if rows is not None:
        weight = weight.index_select(0, rows)
        bias = None if bias is None else bias.index_select(0, rows)
    if cols is not None:
        weight = weight.index_select(1, cols)
    with warnings.catch_warnings():  # "initializing zero-element tensors" for emptied layers
        warnings.simplefilter("ignore", UserWarning)
        new = skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None,
                        device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.requires_grad_(linear.weight.requires_grad)
    return new


def head_columns(kept_heads: torch.Tensor, head_size: int) -> torch.Tensor:
    """Indices of the context dimensions of the given heads."""
    kept_heads = kept_heads.long()
    return (kept_heads[:, None] * head_size + torch.arange(head_size, device=kept_heads.device)).reshape(-1)


def prune_heads(adapter: EncoderAdapter, layer: int, kept_heads: Sequence[int] | torch.Tensor) -> None:
    """Keep only ``kept_heads`` (indices into the layer's current heads) of one layer."""
    arch, view = adapter.arch, adapter.layer(layer)
    kept = torch.as_tensor(kept_heads, dtype=torch.long).sort().values
    cols = head_columns(kept, view.head_size)
    if arch.fused_qkv:   # one projection: the heads' rows in each of its three thirds
        rows = fused_rows(cols, view.attn_out.in_features, 3)
        adapter.replace_in_layer(layer, arch.query, _slice_linear(view.query, rows=rows))
    separate = () if arch.fused_qkv else (arch.query, arch.key, arch.value)
    for path in separate + present(adapter.layers[layer], arch.head_rows):
        adapter.replace_in_layer(layer, path, _slice_linear(adapter.get_in_layer(layer, path), rows=cols))
    adapter.replace_in_layer(layer, arch.attn_out, _slice_linear(view.attn_out, cols=cols))
    attention = adapter.get_in_layer(layer, arch.headless_target)
    if len(kept) == 0 and not isinstance(attention, HeadlessAttention):
        owns_out = arch.attn_out.startswith(arch.headless_target + ".")
        out_name = arch.attn_out.rsplit(".", 1)[1] if owns_out else None
        adapter.replace_in_layer(layer, arch.headless_target, HeadlessAttention(attention, out_name))
    elif len(kept) > 0:
        if arch.position_bias is not None:   # its slices of the shared position bias follow the kept heads
            before = kept_bias_heads(attention, view.num_heads)
            keep_bias_heads(attention, before[kept.to(before.device)])
        for attr in ("num_attention_heads", "n_heads"):
            if hasattr(attention, attr):
                setattr(attention, attr, len(kept))
        if hasattr(attention, "all_head_size"):
            attention.all_head_size = len(kept) * view.head_size


def prune_neurons(adapter: EncoderAdapter, layer: int, kept_neurons: Sequence[int] | torch.Tensor) -> None:
    """Keep only ``kept_neurons`` (indices into the layer's current neurons) of one layer."""
    arch, view = adapter.arch, adapter.layer(layer)
    kept = torch.as_tensor(kept_neurons, dtype=torch.long).sort().values
    rows = fused_rows(kept, view.num_neurons, 2) if arch.gated_ffn else kept   # gated: value and gate rows
    adapter.replace_in_layer(layer, arch.ffn_in, _slice_linear(view.ffn_in, rows=rows))
    adapter.replace_in_layer(layer, arch.ffn_out, _slice_linear(view.ffn_out, cols=kept))


def resize_to(adapter: EncoderAdapter, heads: Sequence[int], neurons: Sequence[int]) -> None:
    """Shrink a freshly built model to per-layer unit counts (weights to be loaded afterwards)."""
    shrink(adapter.model, list(heads), list(neurons))
