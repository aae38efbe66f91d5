"""Loads the compiled part (kprune_ext._C), which registers torch.ops.kprune.*.

The package works without it: every op then runs its PyTorch reference. ``KPRUNE_DISABLE_EXT=1``
skips loading altogether.
"""
from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger("kprune_ext")

OPS = (
    "accumulate_importance",
    "gram_accumulate",
    "solve_damped",
    "masked_ffn",
    "masked_ffn_with_preact",
    "masked_ffn_backward",
    "masked_attention_output",
    "masked_attention_output_backward",
    "activation_math",
    "cpu_capability",
    "cpu_threads_used",
)


def disabled_by_env() -> bool:
    return os.environ.get("KPRUNE_DISABLE_EXT", "0").strip().lower() in ("1", "true", "yes", "on")


def load() -> tuple[bool, str]:
    """Import kprune_ext._C. Returns (loaded, reason when not loaded)."""
    if disabled_by_env():
        reason = "KPRUNE_DISABLE_EXT is set"
        logger.info("kprune_ext: compiled ops disabled (%s); using the PyTorch references", reason)
        return False, reason
    try:
        from kprune_ext import _C  # noqa: F401  (loading the library registers the ops)
    except ImportError as exc:
        reason = f"kprune_ext._C could not be imported: {exc}"
        logger.info("kprune_ext: %s; using the PyTorch references (build with `pip install --no-build-isolation .`)", reason)
        return False, reason
    missing = [name for name in OPS if not hasattr(torch.ops.kprune, name)]
    if missing:
        reason = f"kprune_ext._C is loaded but does not register {missing} (stale build?)"
        logger.warning("kprune_ext: %s; using the PyTorch references", reason)
        return False, reason
    return True, ""
