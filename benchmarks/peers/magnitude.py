"""Magnitude baseline: keep the units whose weights are largest, no data needed, no tuning.

A head's score is the mean square of all its weights (its Q, K, V rows and its output-projection
columns); a neuron's the mean square of its FFN input row and output column. The same fraction
(1 - r) of heads and of neurons is kept, each the highest-scoring over all layers, so the FLOPs
reduction is r (rounded down to whole units). The model is pruned physically.
"""
from __future__ import annotations

import math
import time

import torch

import kprune

from ._common import build_report, check_args, prune_to, sample_counts


def unit_magnitudes(model) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Mean squared weight per head ([heads] per layer) and per neuron ([neurons] per layer)."""
    heads, neurons = [], []
    for v in kprune.encoder_layers(model):
        hs = v.head_size
        rows = torch.cat([v.query.weight, v.key.weight, v.value.weight], 1).square()   # [H*hs, 3d]
        cols = v.attn_out.weight.t().square()                                          # [H*hs, d]
        per_dim = torch.cat([rows, cols], 1).sum(1)
        heads.append(per_dim.view(-1, hs).sum(1) / (hs * (rows.shape[1] + cols.shape[1])))
        per_neuron = v.ffn_in.weight.square().sum(1) + v.ffn_out.weight.square().sum(0)
        neurons.append(per_neuron / (v.ffn_in.in_features + v.ffn_out.out_features))
    return heads, neurons


def _top(scores: list[torch.Tensor], keep: int) -> list[list[int]]:
    flat = torch.cat(scores)
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[flat.argsort(descending=True, stable=True)[:keep]] = True
    out, start = [], 0
    for s in scores:
        out.append(torch.nonzero(chosen[start:start + s.numel()]).flatten().tolist())
        start += s.numel()
    return out


def prune_magnitude(model, samples, task_kind: str, flops_reduction: float, seed: int = 0, *,
                    progress: bool = True) -> kprune.PruneResult:
    """Prune ``model`` (left unchanged) by weight magnitude. ``samples`` only set the sequence length
    of the FLOPs model (as for every method); ``seed`` is unused (deterministic)."""
    check_args(task_kind, flops_reduction)
    started = time.perf_counter()
    model.eval()
    num_samples, num_tokens = sample_counts(samples)
    with torch.no_grad():
        heads, neurons = unit_magnitudes(model)
    keep = 1.0 - flops_reduction
    heads_kept = _top(heads, math.floor(keep * sum(h.numel() for h in heads) + 1e-9))
    neurons_kept = _top(neurons, math.floor(keep * sum(n.numel() for n in neurons) + 1e-9))
    work = prune_to(model, heads_kept, neurons_kept)
    seconds = {"total": time.perf_counter() - started}
    report = build_report(task_kind, model, work, flops_reduction, num_samples, num_tokens, seconds,
                          {"method": "magnitude"})
    return kprune.PruneResult(work, report)
