"""DeBERTa-v2 and -v3 (model type "deberta-v2"): disentangled attention for the heads a layer keeps.

A layer's attention scores add to the content term q·kᵀ two position terms (``pos_att_type``: c2p, the
query against the key projection of the relative-position embeddings; p2c, the key against their query
projection), read at each token pair's bucketed relative position. The table of relative-position
embeddings is one for the whole encoder (``rel_embeddings``, layer-normed when ``norm_rel_ebd`` says so);
each head projects it through its own rows of the layer's key and query projections (``share_att_key``,
as DeBERTa-v3) or of ``pos_key_proj`` / ``pos_query_proj``. Slicing those rows with the heads therefore
keeps the kept heads' computation exact; the table itself is never sliced.
"""
from __future__ import annotations

import torch
from torch import nn

from kprune.errors import UnsupportedModelError
from kprune.flops import RelativeTerms

TERMS = ("c2p", "p2c")


def check_supported(config) -> None:
    """Refuse, by name, the DeBERTa-v2 variants kprune cannot prune exactly."""
    conv = int(getattr(config, "conv_kernel_size", 0) or 0)
    if conv > 0:
        raise UnsupportedModelError(
            f"DeBERTa-v2 with conv_kernel_size={conv} (the convolution after the first layer, as in "
            "deberta-v2-xlarge) is not supported; supported: conv_kernel_size=0 (e.g. DeBERTa-v3)")
    default = config.hidden_size // config.num_attention_heads
    head_size = getattr(config, "attention_head_size", default)
    if head_size != default:
        raise UnsupportedModelError(
            f"DeBERTa-v2 with attention_head_size={head_size} is not supported; supported: hidden_size / "
            f"num_attention_heads = {default}")


def relative_terms(config) -> RelativeTerms | None:
    """The position rows each head projects and scores (for the FLOPs model); None without relative attention."""
    if not getattr(config, "relative_attention", False):
        return None
    terms = [t for t in TERMS if t in (config.pos_att_type or [])]
    buckets = int(getattr(config, "position_buckets", -1))
    span = int(getattr(config, "max_relative_positions", -1))
    span = buckets if buckets > 0 else span if span >= 1 else int(config.max_position_embeddings)
    rows = 2 * span
    # with shared keys the module projects the table through both the query and the key projection
    projected = 2 if getattr(config, "share_att_key", False) else len(terms)
    return RelativeTerms(projected=projected * rows, scored=len(terms) * rows)


def disentangled_context(attention: nn.Module, rel_embeddings: torch.Tensor | None, x: torch.Tensor,
                         key_mask: torch.Tensor) -> torch.Tensor:
    """Concatenated head contexts [batch, seq, heads * head_size] of a (pruned) DisentangledSelfAttention.

    The content scores, scale and softmax are written here with a key-padding mask (key_mask: [batch, seq]
    bool) so that gradients reach x; the position terms come from the module's own
    ``disentangled_attention_bias`` on its (sliced) projections. On real tokens this is the module's output.
    """
    batch, seq, _ = x.shape
    heads = attention.num_attention_heads
    q = attention.transpose_for_scores(attention.query_proj(x), heads)       # [batch * heads, seq, head_size]
    k = attention.transpose_for_scores(attention.key_proj(x), heads)
    v = attention.transpose_for_scores(attention.value_proj(x), heads)
    scale_factor = 1 + sum(t in attention.pos_att_type for t in TERMS)
    scale = torch.sqrt(torch.tensor(q.size(-1), dtype=torch.float) * scale_factor).to(q.dtype)
    scores = torch.bmm(q, k.transpose(-1, -2) / scale)
    if attention.relative_attention:
        scores = scores + attention.disentangled_attention_bias(
            q, k, None, attention.pos_dropout(rel_embeddings), scale_factor)
    scores = scores.view(batch, heads, seq, seq).masked_fill(~key_mask[:, None, None, :], float("-inf"))
    probs = attention.dropout(scores.softmax(-1))
    ctx = torch.bmm(probs.view(-1, seq, seq), v).view(batch, heads, seq, -1)
    return ctx.transpose(1, 2).reshape(batch, seq, -1)
