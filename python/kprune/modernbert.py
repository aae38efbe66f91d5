"""ModernBERT specifics: fused QKV with rotary positions and local (sliding-window) attention, a gated FFN,
pre-norm layers and its task heads.

A head's rows sit in all three thirds of ``attn.Wqkv`` (query, key, value); a neuron is a pair of rows of
``mlp.Wi`` (value ``i`` and gate ``F + i``) and one column of ``mlp.Wo``. The functional attention here is
the padded, masked form (what transformers' ``sdpa`` and ``eager`` paths compute), never the unpadded one.
"""
from __future__ import annotations

import torch
from torch import nn

from kprune.errors import UnsupportedModelError

LAYER_TYPES = ("full_attention", "sliding_attention")
POOLINGS = ("cls", "mean")


def check_config(config) -> None:
    """Refuse ModernBERT variants the functional forward does not compute, naming the option."""
    unknown = sorted(set(config.layer_types) - set(LAYER_TYPES))
    if unknown:
        raise UnsupportedModelError(f"ModernBERT layer_types {unknown} are not supported; "
                                    f"supported: {', '.join(LAYER_TYPES)}")
    if config.classifier_pooling not in POOLINGS:
        raise UnsupportedModelError(f"ModernBERT classifier_pooling={config.classifier_pooling!r} is not supported; "
                                    f"supported: {', '.join(POOLINGS)}")


def fused_rows(columns: torch.Tensor, width: int, parts: int) -> torch.Tensor:
    """Rows of a projection made of ``parts`` stacked blocks of ``width`` rows that belong to ``columns``
    (Wqkv: parts=3, a head's dimensions in Q, K and V; Wi: parts=2, a neuron's value and gate rows)."""
    return torch.cat([columns + part * width for part in range(parts)])


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of x [batch, heads, seq, head_size] in float32 (as transformers computes it)."""
    half = x.shape[-1] // 2
    xf = x.float()
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


def attention_inputs(encoder: nn.Module, layer: nn.Module, x: torch.Tensor, key_mask: torch.Tensor):
    """(q, k, v [batch, heads, seq, head_size], boolean mask [batch, 1, seq, seq]) of one layer's attention.

    x is the normed input of the attention; key_mask [batch, seq] is True on real tokens. Positions are
    0..seq-1 (right padding); a local layer sees keys within ``config.sliding_window`` of the query. Each
    query also sees itself, so that a padded query beyond every real key in its window gets a finite row
    (real rows are unchanged: a real token is within its own window)."""
    attention = layer.attn
    batch, seq, _ = x.shape
    q, k, v = attention.Wqkv(x).view(batch, seq, 3, -1, attention.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    positions = torch.arange(seq, device=x.device)
    cos, sin = encoder.rotary_emb(x, positions[None], layer.attention_type)
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    mask = key_mask[:, None, None, :]
    if layer.attention_type == "sliding_attention":
        distance = (positions[:, None] - positions[None, :]).abs()
        mask = mask & (distance <= encoder.config.sliding_window)
    mask = mask | torch.eye(seq, dtype=torch.bool, device=x.device)
    return q, k, v, mask


def task_head(model: nn.Module, head_kind: str, hidden: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Logits from the final-normed last hidden states: prediction head (dense, activation, norm) on the
    CLS token or the mean over real tokens (``classifier_pooling``), or on every token for QA; then the classifier."""
    if head_kind == "qa":
        return model.classifier(model.drop(model.head(hidden)))
    if model.config.classifier_pooling == "cls":
        pooled = hidden[:, 0]
    else:
        weights = torch.ones(hidden.shape[:2], dtype=hidden.dtype, device=hidden.device) if key_mask is None \
            else key_mask.to(hidden.dtype)
        pooled = (hidden * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
    return model.classifier(model.drop(model.head(pooled)))
