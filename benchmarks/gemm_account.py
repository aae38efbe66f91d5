"""What a run's matrix products alone cost: the seconds and FLOPs of every GEMM, by dtype, under torch's profiler.

A K-prune run's knowledge passes, least-squares statistics and advances are mostly GEMMs whose sizes the
algorithm fixes (the sample's tokens, the model's widths, the kept units). The seconds those GEMMs take,
summed over the run, are what the run would still cost if everything else (attention, norms, casts, Python)
took no time: a lower bound of the run on this machine at the GEMM rates it reaches (benchmarks/bench_gemm.py
shows those rates near the CPU's peak). ``benchmarks/bench_floor.py --gemm-account`` reports it.

The compiled attention kernel's products are its own loops, not GEMMs: they count with the rest.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict

# profiler events that are one dense matrix product each, and the FLOPs of one from its input shapes
GEMM_EVENTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise")


def gemm_flops(name: str, shapes: list) -> int:
    """2·m·k·n (times the batch for bmm) of one GEMM event, from its recorded input shapes."""
    if name == "aten::mm":
        (m, k), (_, n) = shapes[0], shapes[1]
        return 2 * m * k * n
    if name == "aten::addmm":
        (m, k), (_, n) = shapes[1], shapes[2]
        return 2 * m * k * n
    if name == "aten::bmm":
        (b, m, k), (_, _, n) = shapes[0], shapes[1]
        return 2 * b * m * k * n
    if name == "aten::baddbmm":
        (b, m, k), (_, _, n) = shapes[1], shapes[2]
        return 2 * b * m * k * n
    if name == "mkldnn::_linear_pointwise":   # input [..., k], weight [n, k]
        x, w = shapes[0], shapes[1]
        return 2 * math.prod(x[:-1]) * x[-1] * w[0]
    raise ValueError(f"{name} is not a GEMM event; expected one of {GEMM_EVENTS}")


def account(events) -> dict:
    """Per dtype of the first operand: GEMM count, self seconds and GFLOP, from profiler events
    (``prof.events()`` of a profile taken with ``record_shapes=True``); and all ops' self seconds."""
    by_dtype = defaultdict(lambda: {"count": 0, "seconds": 0.0, "gflop": 0.0})
    total = 0.0
    for event in events:
        total += event.self_cpu_time_total / 1e6
        if event.name not in GEMM_EVENTS:
            continue
        shapes = [list(s) for s in event.input_shapes]
        dtypes = getattr(event, "input_dtypes", None) or []
        operand = 1 if event.name in ("aten::addmm", "aten::baddbmm") else 0
        dtype = str(dtypes[operand]) if len(dtypes) > operand else "unknown"
        row = by_dtype[dtype]
        row["count"] += 1
        row["seconds"] += event.self_cpu_time_total / 1e6
        row["gflop"] += gemm_flops(event.name, shapes) / 1e9
    rows = {d: {"count": r["count"], "seconds": round(r["seconds"], 4), "gflop": round(r["gflop"], 3),
                "gflop_per_s": round(r["gflop"] / r["seconds"], 1) if r["seconds"] else None}
            for d, r in sorted(by_dtype.items())}
    return {"gemm": rows, "gemm_seconds": round(sum(r["seconds"] for r in rows.values()), 4),
            "op_self_seconds": round(total, 4)}


def profile_run(run) -> dict:
    """``run()`` under torch's CPU profiler with shapes recorded; returns :func:`account` of it plus the
    profiled wall seconds (the profiler's own cost included)."""
    from torch.profiler import ProfilerActivity, profile

    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    seconds = time.perf_counter() - started
    return {**account(prof.events()), "profiled_seconds": round(seconds, 3)}
