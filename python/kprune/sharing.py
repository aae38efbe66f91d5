"""A student that starts as the model itself: module copies whose parameters share the model's storage.

Pruning never writes into a parameter it did not make (surgery replaces each pruned linear layer with a
new one; weight tuning writes only into those new layers), so the student needs no private copy of the
weights while the run lasts. That keeps one copy of the model in memory instead of two (the embeddings
alone are half of a MiniLM), and weights memory-mapped from a checkpoint are read in place.
:func:`own_parameters` gives the finished student its own copy of whatever is still shared.
"""
from __future__ import annotations

import copy

from torch import nn


def shared_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (its modules, buffers and attributes) whose parameters are new
    :class:`~torch.nn.Parameter` objects on the same storage. Writing into one of its parameters in
    place writes into ``model``'s: replace a parameter instead, or call :func:`own_parameters` first."""
    memo = {id(p): nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in model.parameters()}
    return copy.deepcopy(model, memo)


def _storages(model: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers()) if t.numel()}


def own_parameters(model: nn.Module | None, source: nn.Module) -> int:
    """Give each parameter of ``model`` (None: nothing) that shares storage with a tensor of ``source`` a
    private copy; returns how many were copied."""
    if model is None:
        return 0
    shared = _storages(source)
    copied = 0
    for param in model.parameters():
        if param.numel() and param.untyped_storage().data_ptr() in shared:
            param.data = param.detach().clone()
            copied += 1
    return copied
