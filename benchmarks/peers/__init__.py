"""Peer pruning methods behind K-prune's interface:
``prune_xxx(model, samples, task_kind, flops_reduction, seed=0, **options) -> PruneResult``."""
from .kwon import prune_kwon
from .magnitude import prune_magnitude

__all__ = ["prune_kwon", "prune_magnitude"]
