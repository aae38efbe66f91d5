"""The float32 GEMM backends of the kprune ops: torch's at::mm (MKL) against oneDNN's matmul.

    python benchmarks/bench_gemm.py                 # 1 thread; writes benchmarks/results/gemm.json
    python benchmarks/bench_gemm.py --threads 2

Times x W^T and its input-gradient GEMM g W at the encoder shapes kprune runs (MiniLM 384/1536 and
base 768/3072, 512 and 2048 rows) through ``kprune_ext.ops.linear`` with each backend
(``ops.set_gemm_backend``), in GFLOP/s, median of repeats. Then the memory side: in a fresh process,
500 GEMMs of distinct row counts (as a pruning run's batches and steps make them) with oneDNN's caches
at kprune's cap and uncapped (1024, oneDNN's default), reporting the peak RSS growth of each.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from json_results import write_json_atomically  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gemm.json"
SHAPES = [(512, 384, 1536), (2048, 384, 1536), (2048, 1536, 384), (512, 768, 3072), (2048, 768, 3072),
          (2048, 3072, 768)]   # rows, in features, out features

MEMORY_CHILD = """
import torch, kprune_ext
from kprune_ext import ops
torch.set_num_threads(1)
ops.set_gemm_backend("onednn", min_macs=0)   # every GEMM on oneDNN, as the large ones of a run
def peak():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
w = torch.randn(1536, 384)
ops.linear(torch.randn(8, 384), w)
start = peak()
for rows in range(100, 600):
    y = ops.linear(torch.randn(rows, 384), w)
    ops.linear(y, w.t())
print(ops.gemm_backend(), round(peak() - start, 1))
"""


def cpu_model() -> str | None:
    """The CPU's model name as Linux reports it (None elsewhere)."""
    if not os.path.exists("/proc/cpuinfo"):
        return None
    return next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), None)


def median_seconds(fn, repeats: int, warmup: int = 3) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def gflops(fn, flops: float, repeats: int) -> float:
    return flops / median_seconds(fn, repeats) / 1e9


def time_backends(repeats: int) -> list[dict]:
    import torch

    from kprune_ext import ops

    rows_out = []
    backends = ["aten", "onednn"]
    for m, k, n in SHAPES:
        g = torch.Generator().manual_seed(m + k + n)
        x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
        row = {"rows": m, "in": k, "out": n}
        for backend in backends:
            if ops.set_gemm_backend(backend) != backend:
                row[backend] = None
                continue
            row[backend] = round(gflops(lambda: ops.linear(x, w), 2.0 * m * k * n, repeats), 1)
        rows_out.append(row)
    ops.set_gemm_backend("onednn")
    return rows_out


def memory_growth() -> dict:
    out = {}
    for label, capacity in (("capped", None), ("uncapped", "1024")):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT / 'python'}:{ROOT}"}
        env.pop("ONEDNN_PRIMITIVE_CACHE_CAPACITY", None)
        env.pop("LRU_CACHE_CAPACITY", None)
        if capacity:
            env.update(ONEDNN_PRIMITIVE_CACHE_CAPACITY=capacity, LRU_CACHE_CAPACITY=capacity)
        run = subprocess.run([sys.executable, "-c", MEMORY_CHILD], env=env, capture_output=True, text=True, check=True)
        backend, grown = run.stdout.split()
        out[label] = {"backend": backend, "peak_rss_growth_mb": float(grown), "cache_capacity": capacity or "kprune's cap"}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    sys.path[:0] = [str(ROOT / "python"), str(ROOT)]
    import torch

    import kprune_ext
    from kprune_ext import _loader

    torch.set_num_threads(args.threads)
    if not kprune_ext.EXTENSION_LOADED:
        raise SystemExit(f"the compiled extension is not loaded: {kprune_ext.EXTENSION_ERROR}")
    timings = time_backends(args.repeats)
    print(f"float32 GEMM GFLOP/s, {args.threads} thread(s), torch {torch.__version__}:")
    print("| rows | in | out | aten (MKL) | onednn | onednn / aten |\n|---|---|---|---|---|---|")
    for r in timings:
        ratio = f"{r['onednn'] / r['aten']:.2f}x" if r["onednn"] else "-"
        print(f"| {r['rows']} | {r['in']} | {r['out']} | {r['aten']} | {r['onednn']} | {ratio} |")
    memory = memory_growth()
    print(f"peak RSS growth over 500 GEMM shapes: oneDNN caches at {_loader.ONEDNN_CACHE_CAPACITY} "
          f"{memory['capped']['peak_rss_growth_mb']} MB, uncapped {memory['uncapped']['peak_rss_growth_mb']} MB")
    record = {
        "command": "python benchmarks/bench_gemm.py" + (f" --threads {args.threads}" if args.threads != 1 else ""),
        "threads": args.threads, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "gflops": timings, "memory": memory, "cache_capacity": _loader.ONEDNN_CACHE_CAPACITY,
    }
    write_json_atomically(args.output, record)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
