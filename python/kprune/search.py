"""Knowledge-preserving mask search (KPMS): one threshold over all remaining units."""
from __future__ import annotations

import torch


def search_threshold(scores: torch.Tensor, costs: torch.Tensor, budget: float) -> float:
    """The lowest threshold tau such that the units scoring above tau fit the budget.

    scores, costs: [units] (costs > 0). Units are kept in decreasing score order while the running
    cost fits; tau is the score of the first unit that does not fit (-inf if all fit). Ties at tau
    are pruned together, so the kept cost never exceeds the budget.
    """
    if scores.numel() == 0:
        return float("-inf")
    order = torch.argsort(scores.double(), descending=True, stable=True)
    running = torch.cumsum(costs.double()[order], 0)
    over = torch.nonzero(running > budget)
    if over.numel() == 0:
        return float("-inf")
    return float(scores.double()[order[int(over[0])]])


def kept_units(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of the units scoring strictly above the threshold."""
    return torch.nonzero(scores.double() > threshold).flatten()
