"""Scale study: seconds per sublayer step and peak memory of K-prune against depth, width and sample size.

    python benchmarks/bench_scale.py [--full] [--only base-L2-T10000 ...] [--threads 1] [--force]
                                     [--profile base-L2-T5000] [--output results/scale.json]

Random-weight BertForSequenceClassification models (timing and memory do not depend on the weights'
values, so nothing is fine-tuned) at BERT-base width (hidden 768, 12 heads, FFN 3072) and BERT-large
width (1024, 16, 4096), with the number of layers and the sample's tokens varied; samples are random
ids of 64-128 tokens; task classification, 50% FLOPs reduction, kprune's defaults. A configuration is
named ``<width>-L<layers>-T<tokens>``. Each runs in its own subprocess (peak RSS is per process) and
iterates ``KPruner.steps()``, so every sublayer step is timed on its own (wall clock between steps,
with the setup taken out) along with the per-phase seconds of kprune's report.

Results go to benchmarks/results/scale.json, rewritten after every configuration; configurations
already there are skipped (``--force`` re-runs them), so an interrupted run resumes. Then the table is
printed, the fits and extrapolations are computed (benchmarks/scale_analysis.py) and the plot is
written to benchmarks/results/plots/scale.png. ``--profile KEY`` runs one configuration under
torch.profiler and records where its CPU time goes. ``--no-run`` only re-renders from the JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))
sys.path.insert(0, str(HERE))

from json_results import write_json_atomically  # noqa: E402
from random_bert import random_bert, random_samples, rss_mb, weights_mb  # noqa: E402

RESULTS = HERE / "results" / "scale.json"
PLOT = HERE / "results" / "plots" / "scale.png"
#: the section report.py appends to RESULTS.md, and RESULTS.md itself: --update-results rewrites the
#: generated part between the markers
SECTIONS = (HERE / "results" / "scale.md", HERE / "RESULTS.md")
BEGIN, END = "<!-- scale:begin (written by bench_scale.py --update-results) -->", "<!-- scale:end -->"
#: hidden size, attention heads, FFN neurons ("tiny" is for the smoke test)
WIDTHS = {"base": (768, 12, 3072), "large": (1024, 16, 4096), "tiny": (32, 2, 64)}
VOCAB, MIN_LEN, MAX_LEN, REDUCTION = 30522, 64, 128, 0.5
#: what fits in ~25 minutes on the shared 2-core machine (one thread; in priority order: tokens, depth, width)
DEFAULT = ["base-L2-T10000", "base-L2-T20000", "base-L2-T100000", "base-L4-T10000", "large-L2-T10000"]
#: for a later quiet run: the rest of the token and depth sweeps, and the extrapolated targets (hours)
FULL = DEFAULT + ["base-L2-T50000", "base-L6-T10000", "large-L4-T10000", "large-L2-T20000", "base-L12-T10000",
                  "large-L2-T100000", "large-L8-T10000", "base-L12-T100000", "large-L24-T100000"]
KEY = re.compile(r"^(?P<width>[a-z]+)-L(?P<layers>\d+)-T(?P<tokens>\d+)$")


def parse_key(key: str) -> tuple[str, int, int]:
    """(width, layers, tokens) of a configuration name such as ``base-L2-T10000``."""
    m = KEY.match(key)
    if not m or m["width"] not in WIDTHS or int(m["layers"]) < 1 or int(m["tokens"]) < MAX_LEN:
        raise SystemExit(f"bad configuration {key!r}: expected <width>-L<layers>-T<tokens> with width one of "
                         f"{', '.join(WIDTHS)}, layers >= 1 and tokens >= {MAX_LEN}")
    return m["width"], int(m["layers"]), int(m["tokens"])


def _setup(key: str):
    """The model, the sample and a KPruner (50% reduction, kprune defaults) of configuration ``key``."""
    import kprune

    width, layers, tokens = parse_key(key)
    hidden, heads, ffn = WIDTHS[width]
    model = random_bert(hidden, layers, heads, ffn, VOCAB)
    samples = random_samples(tokens, MIN_LEN, MAX_LEN + 1, VOCAB, first_id=1000)
    return model, samples, kprune.KPruner(model, samples, "classification", REDUCTION,
                                          kprune.KPruneConfig(progress=False))


def _time_setup_cpu(pruner) -> list[float]:
    """Wrap ``pruner._setup`` (run inside the first step) to record its CPU seconds: the list is popped once
    per step, giving the setup's seconds at the first step and 0 after."""
    seconds = [0.0] * (2 * pruner.teacher.num_layers)
    setup = pruner._setup

    def timed() -> None:
        started = time.process_time()
        setup()
        seconds[-1] = time.process_time() - started

    pruner._setup = timed
    return seconds


def one_run(key: str) -> dict:
    """Prune configuration ``key``, timing every sublayer step; runs in the child process."""
    import torch

    width, layers, tokens = parse_key(key)
    started = time.perf_counter()
    model, samples, pruner = _setup(key)
    init = time.perf_counter() - started       # building the model and sample, and KPruner's batching
    baseline, load_before = rss_mb(), os.getloadavg()[0]
    steps, cpu, phases = [], [], []
    setup_cpu = _time_setup_cpu(pruner)
    last, last_cpu, before = time.perf_counter(), time.process_time(), dict(pruner.seconds)
    run_cpu = last_cpu
    for _ in pruner.steps():
        now, now_cpu = time.perf_counter(), time.process_time()
        delta = {name: pruner.seconds[name] - before.get(name, 0.0) for name in pruner.seconds}
        steps.append(now - last - delta.get("setup", 0.0))   # the first step's wall time includes the setup
        cpu.append(now_cpu - last_cpu - setup_cpu.pop())
        phases.append({name: round(delta.get(name, 0.0), 3) for name in ("measure", "search", "tune", "advance")})
        last, last_cpu, before = now, now_cpu, dict(pruner.seconds)
    run_cpu = time.process_time() - run_cpu
    report = pruner.report()
    model_mb = weights_mb(model)
    return {"key": key, "width": width, "hidden": WIDTHS[width][0], "heads": WIDTHS[width][1],
            "ffn": WIDTHS[width][2], "layers": layers, "tokens_requested": tokens,
            "num_tokens": report["num_tokens"], "num_samples": report["num_samples"],
            "avg_seq_len": round(report["avg_seq_len"], 1), "flops_reduction": round(report["flops_reduction"], 4),
            "run_seconds": round(report["seconds"]["total"], 2), "run_cpu_seconds": round(run_cpu, 2),
            "build_seconds": round(init, 2),
            "phase_seconds": report["seconds"], "step_seconds": [round(s, 3) for s in steps],
            "step_cpu_seconds": [round(s, 3) for s in cpu],
            "step_phase_seconds": phases, "step_mean": round(sum(steps) / len(steps), 3),
            "step_first": round(steps[0], 3), "step_last": round(steps[-1], 3),
            "step_cpu_mean": round(sum(cpu) / len(cpu), 3), "step_cpu_first": round(cpu[0], 3),
            "step_cpu_last": round(cpu[-1], 3),
            "peak_rss_mb": report["peak_rss_mb"], "rss_before_mb": round(baseline, 1), "model_mb": round(model_mb, 1),
            # the student is a copy of the weights: what remains is the algorithm's working memory
            "working_mb": round(report["peak_rss_mb"] - baseline - model_mb, 1),
            "threads": torch.get_num_threads(), "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2), "extension": report["extension"]}


def profile_run(key: str) -> dict:
    """Run configuration ``key`` under torch.profiler: seconds per category of operator (self time, see
    scale_analysis.categorise), the 15 costliest operators, and the wall and CPU seconds."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from scale_analysis import categorise

    _, _, pruner = _setup(key)
    started, started_cpu = time.perf_counter(), time.process_time()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        pruner.run()
    wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]
    return {"key": key, "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
            "phase_seconds": pruner.report()["seconds"], "threads": torch.get_num_threads(),
            "categories": categorise(prof.events(), wall),
            "top_ops": {e.key: round(e.self_cpu_time_total / 1e6, 3) for e in top}}


def run_child(key: str, threads: int, profile: bool = False) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    flag = "--child-profile" if profile else "--child"
    done = subprocess.run([sys.executable, __file__, flag, key], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{key} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def update_results(text: str, paths=SECTIONS) -> None:
    """Put ``text`` between the scale markers of each file in ``paths``."""
    for path in paths:
        current = path.read_text()
        if BEGIN not in current or END not in current:
            raise SystemExit(f"{path} has no {BEGIN} ... {END} markers to replace")
        head, rest = current.split(BEGIN, 1)
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])
        os.replace(temp, path)


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"runs": {}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="also the deeper and larger configurations (hours)")
    parser.add_argument("--only", nargs="+", metavar="KEY", help="run these configurations instead of the list")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--force", action="store_true", help="re-run configurations already recorded")
    parser.add_argument("--profile", metavar="KEY", help="profile this configuration (torch.profiler) and record it")
    parser.add_argument("--no-run", action="store_true", help="only render the table, fits and plot")
    parser.add_argument("--update-results", action="store_true",
                        help="write the table, fits and profile into results/scale.md and RESULTS.md")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-profile", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child or args.child_profile:
        print(json.dumps(one_run(args.child) if args.child else profile_run(args.child_profile)))
        return 0
    import scale_analysis

    keys = args.only or (FULL if args.full else DEFAULT)
    for key in keys + ([args.profile] if args.profile else []):
        parse_key(key)
    data = load(args.output)
    data["note"] = (f"random-weight BERT classifiers, ids of {MIN_LEN}-{MAX_LEN} tokens, {REDUCTION:.0%} FLOPs "
                    "reduction, kprune defaults; seconds are wall clock on a shared 2-core machine (other jobs "
                    "running), so they are upper bounds. working_mb = peak RSS - RSS with model and sample built "
                    "- one copy of the weights (the student).")
    meta = {"commit": _commit(), "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
            "date": datetime.date.today().isoformat(), "command": "python benchmarks/bench_scale.py " + " ".join(argv or sys.argv[1:])}
    for key in [] if args.no_run else keys:
        if key in data["runs"] and not args.force:
            print(f"{key}: already recorded, skipped", flush=True)
            continue
        print(f"{key}: running ...", flush=True)
        data["runs"][key] = dict(run_child(key, args.threads), **meta)
        write_json_atomically(args.output, data)
        print(scale_analysis.row(data["runs"][key]), flush=True)
    if args.profile and not args.no_run:
        data["profile"] = dict(run_child(args.profile, args.threads, profile=True), **meta)
        write_json_atomically(args.output, data)
    text = scale_analysis.render(data)
    print(text)
    if data["runs"]:
        scale_analysis.plot(data, args.plot)
    if args.update_results:
        update_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
