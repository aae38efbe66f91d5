"""Peak memory of a K-prune run against the number of layers (it should not grow with them).

    python benchmarks/memory_scaling.py [--layers 2 4 8 12] [--num-tokens 30000] [--hidden 384]

Each depth runs in its own process (peak RSS is per process) on a randomly initialised BERT of that
depth with synthetic samples; prints a table and writes benchmarks/results/memory_scaling.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "memory_scaling.json"


def one_run(layers: int, num_tokens: int, hidden: int, recompute: bool = True) -> dict:
    import kprune
    from random_bert import random_bert, random_samples, rss_mb, weights_mb

    model = random_bert(hidden, layers, hidden // 32, 4 * hidden, vocab=1000)
    samples = random_samples(num_tokens, 16, 64, vocab=1000)
    baseline = rss_mb()
    started = time.perf_counter()
    report = kprune.prune(model, samples, "classification", 0.5, kprune.KPruneConfig(progress=False, recompute=recompute)).report
    model_mb = weights_mb(model)
    # the student is a copy of the model: what remains is the working memory of the algorithm
    working = report["peak_rss_mb"] - baseline - model_mb
    return {"layers": layers, "hidden": hidden, "num_tokens": report["num_tokens"],
            "rss_before_mb": round(baseline, 1), "model_mb": round(model_mb, 1),
            "peak_rss_mb": report["peak_rss_mb"], "working_mb": round(working, 1),
            "seconds": round(time.perf_counter() - started, 1)}


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=RESULTS.parent, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def record_run(rows: list[dict], no_recompute: bool) -> None:
    """Add this run to the results file, replacing an earlier run of the same mode."""
    mode = "one graph per batch (--no-recompute)" if no_recompute else "sublayer-wise recompute (default)"
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    runs = [r for r in data.get("runs", []) if r.get("mode") != mode]
    runs.append({"mode": mode, "command": "OMP_NUM_THREADS=1 python benchmarks/memory_scaling.py " + " ".join(sys.argv[1:]),
                 "commit": _commit(), "rows": rows})
    data["runs"] = runs
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(RESULTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4, 8, 12])
    parser.add_argument("--num-tokens", type=int, default=30_000)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--no-recompute", action="store_true", help="one autograd graph per batch (faster, more memory)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(one_run(args.child, args.num_tokens, args.hidden, not args.no_recompute)))
        return
    rows = []
    for layers in args.layers:
        done = subprocess.run([sys.executable, __file__, "--child", str(layers), "--num-tokens", str(args.num_tokens),
                               "--hidden", str(args.hidden)] + (["--no-recompute"] if args.no_recompute else []), capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    record_run(rows, args.no_recompute)
    print("| layers | tokens | RSS with model (MB) | model weights (MB) | peak RSS (MB) | working memory (MB) | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layers']} | {r['num_tokens']} | {r['rss_before_mb']} | {r['model_mb']} | {r['peak_rss_mb']} | "
              f"{r['working_mb']} | {r['seconds']} |")


if __name__ == "__main__":
    main()
