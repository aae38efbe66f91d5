"""Which precision the knowledge measurement runs in: ``measure_dtype="auto"`` is bfloat16 on a device that
computes it natively (a CPU with AVX512-BF16 or AMX-BF16, a CUDA GPU with bf16 support), float32 elsewhere,
where bf16 would be emulated and slower."""
from __future__ import annotations

import functools
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
