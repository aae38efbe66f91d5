"""Loads the compiled part (kprune_ext._C), which registers torch.ops.kprune.*, and holds the outcome.

The package works without it: every op then runs its PyTorch reference. ``KPRUNE_DISABLE_EXT=1``
skips loading altogether. :func:`load` (run once by ``kprune_ext/__init__``) records the outcome in
``EXTENSION_LOADED`` / ``EXTENSION_ERROR`` here, where ``kprune_ext`` and ``kprune_ext.ops`` read it.
A library that is present but fails to import is a WARNING; a library that was never built is INFO.
"""
from __future__ import annotations

import importlib.machinery
import logging
import os

import torch

logger = logging.getLogger("kprune_ext")

OPS = (
    "accumulate_importance",
    "accumulate_group_sums",
    "gram_accumulate",
    "solve_damped",
    "masked_ffn",
    "masked_ffn_with_preact",
    "masked_ffn_backward",
    "masked_attention_output",
    "masked_attention_output_backward",
    "activation_math",
    "linear",
    "gemm_backend",
    "cpu_capability",
    "cpu_threads_used",
)

# oneDNN (torch's: the ops' float32 GEMMs on non-Intel x86 CPUs and every bf16 matmul run on it) keeps a JIT-compiled primitive
# per GEMM shape, about 1 MB each, and kprune's shapes change with every batch and step: uncapped, 500
# shapes grew the peak RSS by 566 MB, capped by 26 MB (benchmarks/bench_gemm.py). The caps apply when
# set before the process's first oneDNN call; values already in the environment are kept.
ONEDNN_CACHE_CAPACITY = "16"
for _cache in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
    os.environ.setdefault(_cache, ONEDNN_CACHE_CAPACITY)


# KPRUNE_GEMM chooses the float32 CPU GEMM backend (read by the compiled core at its first GEMM)
GEMM_ENV_VALUES = ("auto", "onednn", "aten")
if os.environ.get("KPRUNE_GEMM", "auto") not in GEMM_ENV_VALUES:
    raise ValueError(f"KPRUNE_GEMM={os.environ['KPRUNE_GEMM']!r} is not supported; expected one of {GEMM_ENV_VALUES}")


#: Whether the compiled ops are in use, and why not (empty when they are); set by :func:`load`.
EXTENSION_LOADED = False
EXTENSION_ERROR = "kprune_ext._loader.load() has not run"


def disabled_by_env() -> bool:
    return os.environ.get("KPRUNE_DISABLE_EXT", "0").strip().lower() in ("1", "true", "yes", "on")


def built_library() -> str | None:
    """Path of the compiled library file inside the package, or None when it was never built."""
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(here, "_C" + suffix)
        if os.path.isfile(path):
            return path
    return None


def load() -> tuple[bool, str]:
    """Try to load kprune_ext._C (see :func:`try_load`) and record the outcome in this module."""
    global EXTENSION_LOADED, EXTENSION_ERROR
    EXTENSION_LOADED, EXTENSION_ERROR = try_load()
    return EXTENSION_LOADED, EXTENSION_ERROR


def try_load() -> tuple[bool, str]:
    """Import kprune_ext._C. Returns (loaded, reason when not loaded); records nothing."""
    if disabled_by_env():
        reason = "KPRUNE_DISABLE_EXT is set"
        logger.info("kprune_ext: compiled ops disabled (%s); using the PyTorch references", reason)
        return False, reason
    try:
        from kprune_ext import _C  # noqa: F401  (loading the library registers the ops)
    except (ImportError, OSError) as exc:
        library = built_library()
        if library is None:
            reason = f"kprune_ext._C is not built ({exc})"
            logger.info("kprune_ext: %s; using the PyTorch references (build with "
                        "`pip install --no-build-isolation .`)", reason)
        else:
            reason = f"kprune_ext._C ({library}) failed to load: {exc}"
            logger.warning("kprune_ext: %s; using the PyTorch references (rebuild it, or set "
                           "KPRUNE_DISABLE_EXT=1 to silence this)", reason)
        return False, reason
    missing = [name for name in OPS if not hasattr(torch.ops.kprune, name)]
    if missing:
        reason = f"kprune_ext._C is loaded but does not register {missing} (stale build?)"
        logger.warning("kprune_ext: %s; using the PyTorch references", reason)
        return False, reason
    return True, ""
