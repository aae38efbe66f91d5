"""The FLOPs model of DESIGN.md (embeddings, LayerNorm, biases and the task head are ignored)."""
from __future__ import annotations

from collections.abc import Sequence


def head_flops(seq_len: float, hidden: int, head_size: int) -> float:
    """Q, K, V projections, attention scores and mixing, and the output projection of one head."""
    s = float(seq_len)
    return 6 * s * hidden * head_size + 4 * s * s * head_size + 2 * s * head_size * hidden


def neuron_flops(seq_len: float, hidden: int, gated: bool = False) -> float:
    """Input and output projection of one FFN neuron; a gated (GLU) neuron has two input rows (value, gate)."""
    return (6 if gated else 4) * float(seq_len) * hidden


def model_flops(heads: Sequence[int], neurons: Sequence[int], seq_len: float, hidden: int, head_size: int,
                gated: bool = False) -> float:
    fh, fn = head_flops(seq_len, hidden, head_size), neuron_flops(seq_len, hidden, gated)
    return sum(h * fh + n * fn for h, n in zip(heads, neurons))
