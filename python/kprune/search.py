"""Knowledge-preserving mask search (KPMS): one threshold over all remaining units."""
from __future__ import annotations

import torch


def search_kept(scores: torch.Tensor, costs: torch.Tensor, budget: float) -> tuple[torch.Tensor, float]:
    """Keep the units scoring above the lowest threshold whose kept set fits the budget.

    scores, costs: [units] (costs > 0). Units are taken in decreasing score order (ties in index
    order) while the running cost fits; returns (kept mask [units] bool, threshold), the threshold
    being the score of the first unit left out (-inf when all fit). Breaking ties by index rather
    than pruning every unit at the threshold keeps a budget that all-equal scores (e.g. zero
    predictive knowledge at the first step) would otherwise waste.
    """
    kept = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if scores.numel() == 0:
        return kept, float("-inf")
    order = torch.argsort(scores.double(), descending=True, stable=True)
    running = torch.cumsum(costs.double()[order], 0)
    count = int((running <= budget).sum())   # running is increasing: the fitting units are a prefix
    kept[order[:count]] = True
    threshold = float(scores.double()[order[count]]) if count < scores.numel() else float("-inf")
    return kept, threshold
