"""Giving freed heap memory back to the system while a run lasts.

glibc's malloc keeps what tensors free and reuses it only where a new request fits; small chunks it
caches per thread sit between the freed blocks and keep them from merging, so over a run the heap
fills with resident holes too small for the next batch (on the SST-2 20k-token sample: ~170 MB, the
peak at ~920 MB instead of ~750). :class:`HeapTrimmer` calls ``malloc_trim``, which returns the free
pages inside the heap (not only at its top), when the resident set passes its high-water mark.
Elsewhere than glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import os

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_open = open   # still bound when a KPruner.steps() generator is finalised at interpreter exit


def _find_trim():
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, AttributeError, TypeError):
        return None


_TRIM = _find_trim()


def resident_bytes() -> int | None:
    """This process's resident set size in bytes (None where /proc is not there)."""
    try:
        with _open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; False where that is not possible (not glibc)."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class HeapTrimmer:
    """Keeps the resident set near the most the run has really used.

    :meth:`poll` (cheap: one read of /proc/self/statm; call it after every batch) trims only when the
    resident set passes ``limit``: the largest size it had right after a trim, plus ``slack_mb``. Below
    that the heap's free memory stays resident for reuse (trimming it would only cost page faults when it
    is used again, and could not lower the peak). :meth:`trim` trims at once (between phases of a run)."""

    def __init__(self, slack_mb: float = 48.0):
        self.enabled = _TRIM is not None and resident_bytes() is not None
        self.slack = int(slack_mb * 2**20)
        self.limit = 0
        self.trims = 0

    def trim(self) -> None:
        if self.enabled:
            release_free_memory()
            self.trims += 1
            self.limit = max(self.limit, (resident_bytes() or 0) + self.slack)

    def poll(self) -> None:
        if self.enabled and (resident_bytes() or 0) > self.limit:
            self.trim()
