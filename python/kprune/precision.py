"""Which precision the knowledge measurement runs in: ``measure_dtype="auto"`` is bfloat16 on a device that
computes it natively (a CPU with AVX512-BF16 or AMX-BF16, a CUDA GPU with bf16 support), float32 elsewhere,
where bf16 would be emulated and slower."""
from __future__ import annotations

import contextvars
import functools
from contextlib import contextmanager
from pathlib import Path

NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (/proc/cpuinfo); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def native_bf16(device) -> bool:
    import torch   # here, not at import: the CLI's config import must not load torch (fast --help)

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_flags() & NATIVE_BF16_CPU_FLAGS)
    return False


def resolve_measure_dtype(name: str, device) -> str:
    """``name`` itself, or for "auto" the precision :func:`native_bf16` picks for ``device``."""
    if name != "auto":
        return name
    return "bfloat16" if native_bf16(device) else "float32"


# weight -> its autocast-dtype copy, within a cached_casts() block (None outside one)
_CASTS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("kprune_cached_casts", default=None)


@contextmanager
def cached_casts():
    """Within the block, :func:`autocast_weight` casts each weight to the autocast dtype once, not at every
    GEMM: a knowledge pass runs every sublayer's weights forward and backward for every compute batch, and
    its weights do not change during the pass (autocast's own cast cache is off: it would also keep a copy
    of every batch's hidden states). The copies live until the block ends."""
    token = _CASTS.set({})
    try:
        yield
    finally:
        _CASTS.reset(token)


def autocast_weight(weight):
    """``weight`` in the autocast dtype of its device, cast once per :func:`cached_casts` block; ``weight``
    itself outside such a block, outside autocast, or when it is not float32."""
    import torch

    cache = _CASTS.get()
    if cache is None or weight.dtype != torch.float32 or not torch.is_autocast_enabled(weight.device.type):
        return weight
    hit = cache.get(id(weight))
    if hit is None or hit[0] is not weight:   # the original is kept in the entry, so its id stays its own
        hit = cache[id(weight)] = (weight, weight.detach().to(torch.get_autocast_dtype(weight.device.type)))
    return hit[1]


@contextmanager
def measuring_in(dtype: str, device_type: str):
    """A knowledge pass in ``dtype``: nothing to do in float32; otherwise autocast, with the weights cast once
    (:func:`cached_casts`) instead of autocast's cast cache, which would also keep a low-precision copy of every
    leaf input that requires grad (the recompute backward's per-batch hidden states) until the pass ends."""
    if dtype == "float32":
        yield
        return
    import torch

    with torch.autocast(device_type, getattr(torch, dtype), cache_enabled=False), cached_casts():
        yield
