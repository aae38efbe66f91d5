"""The FLOPs model of DESIGN.md (embeddings, LayerNorm, biases and the task head are ignored)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class RelativeTerms(NamedTuple):
    """Per head, the relative-position rows of DeBERTa's disentangled attention: ``projected`` rows of the
    shared table go through the head's d -> d_h projections (once per forward, counted once per sequence as
    a forward of one sequence computes them); each token scores ``scored`` rows (c2p and p2c together)."""

    projected: int
    scored: int


def head_flops(seq_len: float, hidden: int, head_size: int, relative: RelativeTerms | None = None) -> float:
    """Q, K, V projections, attention scores and mixing, and the output projection of one head (plus, for
    DeBERTa, the projections of the position table and the scores of every token against them)."""
    s = float(seq_len)
    flops = 6 * s * hidden * head_size + 4 * s * s * head_size + 2 * s * head_size * hidden
    if relative is not None:
        flops += 2 * relative.projected * hidden * head_size + 2 * s * relative.scored * head_size
    return flops


def neuron_flops(seq_len: float, hidden: int, gated: bool = False) -> float:
    """Input and output projection of one FFN neuron; a gated (GLU) neuron has two input rows (value, gate)."""
    return (6 if gated else 4) * float(seq_len) * hidden


def model_flops(heads: Sequence[int], neurons: Sequence[int], seq_len: float, hidden: int, head_size: int,
                relative: RelativeTerms | None = None, gated: bool = False) -> float:
    fh, fn = head_flops(seq_len, hidden, head_size, relative), neuron_flops(seq_len, hidden, gated)
    return sum(h * fh + n * fn for h, n in zip(heads, neurons))
