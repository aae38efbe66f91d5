"""Where onnxruntime spends its time: kernel milliseconds per op type, unpruned against pruned MiniLM.

    python benchmarks/profile_ort_ops.py [--threads 1] [--repeats 5] [--reduction 0.5] [--batch 32]

The models are those of bench_export_latency.py (same cache). Each is exported twice with
kprune.export_model: the default graph (optimize=True) and the exporter's own (optimize=False). Each
graph runs in onnxruntime (ORT_ENABLE_ALL, --threads intra-op threads) with its profiler on, on random
ids of --batch x 128; the kernel times of the profile are summed per op type of the graph onnxruntime
runs (after its own fusions) and divided by the number of runs. The runs of the four graphs are
interleaved. Writes benchmarks/results/ort_op_profile.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_export_latency import ROOT, _commit, build_models, make_inputs   # noqa: E402
from json_results import write_json_atomically                     # noqa: E402

RESULTS_JSON = ROOT / "benchmarks" / "results" / "ort_op_profile.json"
GRAPHS = {"optimized": True, "exporter": False}


def session(path: Path, threads: int, profile_prefix: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def per_op_type(profile_file: str, runs: int) -> dict[str, dict]:
    """Kernel ms per run and node count per op type, from an onnxruntime profile (a Chrome trace)."""
    events = json.loads(Path(profile_file).read_text())
    total, count = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event["args"]["op_name"]
            total[op] += event["dur"] / 1e3
            count[op] += 1
    return {op: {"ms": total[op] / runs, "nodes": count[op] // runs} for op in total}


def table(data: dict) -> str:
    keys = list(data["profiles"])
    ops = sorted({op for key in keys for op in data["profiles"][key]["ops"]},
                 key=lambda op: -max(data["profiles"][k]["ops"].get(op, {}).get("ms", 0.0) for k in keys))
    lines = ["| op type | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for op in ops:
        cells = []
        for key in keys:
            entry = data["profiles"][key]["ops"].get(op)
            cells.append("" if entry is None else f"{entry['ms']:.1f} ({entry['nodes']})")
        if any(cells):
            lines.append(f"| {op} | " + " | ".join(cells) + " |")
    lines.append("| **kernels, total** | " + " | ".join(
        f"**{sum(e['ms'] for e in data['profiles'][k]['ops'].values()):.1f}**" for k in keys) + " |")
    lines.append("| median process CPU ms per run | " + " | ".join(
        f"{data['profiles'][k]['cpu_ms']:.1f}" for k in keys) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--repeats", type=int, default=5, help="profiled runs of each graph (after one warm-up)")
    parser.add_argument("--reduction", type=float, default=0.5, help="FLOPs reduction of the pruned model")
    parser.add_argument("--batch", type=int, default=32, help="batch size (sequence length 128)")
    parser.add_argument("--num-tokens", type=int, default=20_000, help="pruning sample (as bench_export_latency.py)")
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/kprune/bench-export"))
    parser.add_argument("--output", default=str(RESULTS_JSON), help="JSON file to write")
    args = parser.parse_args()
    if args.threads < 1 or args.repeats < 1 or args.batch < 1:
        parser.error("--threads, --repeats and --batch must be >= 1")
    import onnxruntime
    import transformers

    from kprune.export import export_model

    transformers.logging.set_verbosity_error()
    models, info = build_models(argparse.Namespace(reductions=[args.reduction], num_tokens=args.num_tokens,
                                                   cache_dir=args.cache_dir))
    feed = {k: v.numpy() for k, v in make_inputs(args.batch, 128, models["unpruned"].config.vocab_size).items()}
    with tempfile.TemporaryDirectory(prefix="kprune-ortprof-") as work:
        sessions = {}
        for name, model in models.items():
            for graph, optimize in GRAPHS.items():
                path = export_model(model, Path(work) / f"{name}-{graph}.onnx", optimize=optimize)
                sessions[f"{name}, {graph}"] = session(path, args.threads, str(Path(work) / f"{name}-{graph}"))
        cpu = {key: [] for key in sessions}
        for key, s in sessions.items():
            s.run(None, feed)                      # warm-up (profiled too: counted in the runs below)
        for _ in range(args.repeats):
            for key, s in sessions.items():
                started = time.process_time()
                s.run(None, feed)
                cpu[key].append((time.process_time() - started) * 1e3)
        profiles = {key: {"ops": per_op_type(s.end_profiling(), args.repeats + 1),
                          "cpu_ms": float(np.median(cpu[key]))} for key, s in sessions.items()}
    data = {"command": "python benchmarks/profile_ort_ops.py " + " ".join(sys.argv[1:]), "commit": _commit(),
            "threads": args.threads,
            "repeats": args.repeats, "batch": args.batch, "seq_len": 128, "onnxruntime": onnxruntime.__version__,
            "load_average_after": os.getloadavg()[0], "models": info, "profiles": profiles}
    name = f"pruned-{round(args.reduction * 100)}"
    data["cpu_speedup"] = {graph: profiles[f"unpruned, {graph}"]["cpu_ms"] / profiles[f"{name}, {graph}"]["cpu_ms"]
                           for graph in GRAPHS}
    write_json_atomically(Path(args.output), data)
    print(table(data))
    print("\nunpruned / pruned process CPU time: " + ", ".join(f"{g} graph {v:.2f}×" for g, v in data["cpu_speedup"].items()))


if __name__ == "__main__":
    main()
