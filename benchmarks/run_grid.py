"""The pruning benchmark grid: K-prune against its peers and ablations on the fine-tuned MiniLM.

    python benchmarks/run_grid.py [--data-dir ../shared/data] [--cache-dir ~/.cache/kprune-bench]
                                  [--tasks ...] [--methods ...] [--reductions ...] [--seeds ...]
                                  [--num-tokens 100000] [--threads 1]

One command runs the whole experiment: tasks without a fine-tuned checkpoint
(``<cache-dir>/finetuned/<task>``) are first fine-tuned by benchmarks/finetune_recipe.py (``--no-finetune``
skips them instead), then the cells run, then benchmarks/report.py renders RESULTS.md and the plots
(``--no-report`` skips that). A cell is (task, method, FLOPs reduction, seed); the
seed draws the pruning sample. Each cell runs in its own subprocess (so its peak memory is its own):
sample, prune, evaluate on the dev split with the fine-tuning recipe's settings, and time the pruned
model against the unpruned one on CPU (batch 32 and batch 1, sequence length 128, interleaved runs).
Results go to ``benchmarks/results/grid.json``, rewritten atomically after every cell; cells already
there are not redone, so an interrupted run resumes. ``benchmarks/report.py`` renders RESULTS.md.
Default order: K-prune and Kwon at 50/70/80% first, then the ablations and magnitude, then 40/60%,
then the extra seeds (1, 2) of the 50% and 80% columns.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(REPO / "examples"))  # finetune.py, latency.py (tooling, not the library)
sys.path.insert(0, str(HERE))

from json_results import locked, write_json_atomically  # noqa: E402
from grid_spec import (BF16_METHODS, BF16_REDUCTIONS, CANDIDATE_METHODS, CANDIDATE_REDUCTIONS, DEFAULT_CONFIGS,  # noqa: E402
                       CANDIDATE_SEEDS, EXTRA_SEEDS,
                       KPRUNE_CONFIGS, LATENCY_SHAPES, MAIN_METHODS, METHODS, OTHER_METHODS, REDUCTIONS,
                       TASK_ORDER, TOKEN_FACTOR, canonical_command, cell_key, planned_cells)

logger = logging.getLogger("run_grid")


# ------------------------------------------------------------------------------------------------
# One cell (runs in a subprocess)
# ------------------------------------------------------------------------------------------------

def _rss_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        return True
    except OSError:
        return False


def prune_with(method: str, model, samples, kind: str, reduction: float, seed: int):
    import kprune
    from peers import prune_kwon, prune_magnitude

    if method in KPRUNE_CONFIGS:
        return kprune.prune(model, samples, kind, reduction, config=kprune.KPruneConfig.paper(**KPRUNE_CONFIGS[method]))
    if method in DEFAULT_CONFIGS:
        return kprune.prune(model, samples, kind, reduction, config=kprune.KPruneConfig(**DEFAULT_CONFIGS[method]))
    if method == "kwon":
        return prune_kwon(model, samples, kind, reduction, seed=seed)
    if method == "magnitude":
        return prune_magnitude(model, samples, kind, reduction, seed=seed)
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def measure_latency(pruned, unpruned, repeats: dict[int, int] | None = None) -> dict:
    """Median seconds per forward of both models on random ids, interleaved (examples/latency.py);
    shapes (batch, seq) from LATENCY_SHAPES."""
    from latency import compare_latency

    repeats = repeats or {32: 5, 1: 20}
    out = {}
    for batch, seq in LATENCY_SHAPES:
        t = compare_latency({"pruned": pruned, "unpruned": unpruned}, batch, seq, repeats[batch])
        out[f"b{batch}_s{seq}"] = {"pruned_s": t["pruned"], "unpruned_s": t["unpruned"],
                                   "speedup": t["unpruned"] / t["pruned"], "repeats": repeats[batch]}
    return out


def unpruned_metric(checkpoint: Path, record: dict, model, tokenizer, task: str, data, max_length: int,
                    doc_stride: int) -> float:
    """The unpruned model's dev score at the lengths the cells use: the fine-tuning record's when it was
    evaluated at them, else evaluated once and cached beside the checkpoint."""
    from kprune.evaluation import evaluate
    from kprune.tasks import get_task
    spec = get_task(task)
    settings = record["settings"]
    same = settings["max_length"] == max_length and (spec.kind != "qa" or settings.get("doc_stride") == doc_stride)
    if same:
        return float(record["dev_metrics"][spec.main_metric])
    cache = checkpoint / f"unpruned_dev_{max_length}_{doc_stride}.json"
    if not cache.is_file():
        metrics = evaluate(model, tokenizer, task, data, split="dev", max_length=max_length, doc_stride=doc_stride,
                           max_examples=settings.get("max_eval_examples"))
        cache.write_text(json.dumps({k: float(v) for k, v in metrics.items()}) + "\n")
    return float(json.loads(cache.read_text())[spec.main_metric])


def run_cell(task: str, method: str, reduction: float, seed: int, data_dir: Path, cache_dir: Path,
             num_tokens: int, threads: int) -> dict:
    import torch
    import transformers

    import kprune_ext
    from finetune_recipe import task_data
    from kprune.data import sample_features
    from kprune.evaluation import evaluate
    from finetune import read_record
    from kprune.tasks import get_task

    torch.set_num_threads(threads)
    spec = get_task(task)
    checkpoint = cache_dir / "finetuned" / task
    record = read_record(checkpoint)
    settings = record["settings"]
    data = task_data(task, data_dir, cache_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    cls = (transformers.AutoModelForQuestionAnswering if spec.kind == "qa"
           else transformers.AutoModelForSequenceClassification)
    model = cls.from_pretrained(checkpoint).eval()

    # pruning sample and evaluation at the task's lengths (the paper's: 128 tokens; SQuAD 384-token
    # windows with stride 128), whatever length the checkpoint was fine-tuned at
    max_length, doc_stride = spec.lengths()
    samples = sample_features(task, data, tokenizer, num_tokens=num_tokens * TOKEN_FACTOR.get(method, 1), seed=seed,
                              max_length=max_length, doc_stride=doc_stride)
    rss_before = _rss_mb("VmRSS")
    exact_peak = _reset_peak_rss()
    torch.manual_seed(seed)
    started = time.perf_counter()
    result = prune_with(method, model, samples, spec.kind, reduction, seed)
    prune_seconds = time.perf_counter() - started
    peak = _rss_mb("VmHWM") if exact_peak else result.report.get("peak_rss_mb")
    pruned = result.model.eval()

    started = time.perf_counter()
    metrics = evaluate(pruned, tokenizer, task, data, split="dev", max_length=max_length,
                       doc_stride=doc_stride, max_examples=settings.get("max_eval_examples"))
    eval_seconds = time.perf_counter() - started
    latency = measure_latency(pruned, model)
    report = dict(result.report)
    report.pop("mask_tuning", None)
    return {
        "task": task, "method": method, "reduction_target": reduction, "seed": seed,
        "metric_name": spec.main_metric,
        "metric": float(metrics[spec.main_metric]),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "unpruned_metric": unpruned_metric(checkpoint, record, model, tokenizer, task, data, max_length, doc_stride),
        "flops_reduction": report["flops_reduction"],
        "flops_before": report["flops_before"], "flops_after": report["flops_after"],
        "params_before": report["params_before"], "params_after": report["params_after"],
        "heads_kept": report["heads_kept"], "neurons_kept": report["neurons_kept"],
        "prune_seconds": prune_seconds,
        "prune_phase_seconds": report.get("seconds", {}),
        "config": report.get("config"),   # the KPruneConfig a K-prune method ran (the defaults change between versions)
        "peak_rss_mb": peak, "rss_before_prune_mb": rss_before, "peak_is_per_call": exact_peak,
        "eval_seconds": eval_seconds,
        "latency": latency,
        "num_samples": report["num_samples"], "num_tokens": report["num_tokens"],
        "avg_seq_len": report["avg_seq_len"],
        "extension": bool(kprune_ext.EXTENSION_LOADED),
        "threads": threads,
        "eval_settings": {"max_length": max_length, "doc_stride": doc_stride,
                          "max_examples": settings.get("max_eval_examples"), "data": str(data)},
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------------------------
# The grid (parent process)
# ------------------------------------------------------------------------------------------------

def load_grid(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return {"cells": {}}


def write_grid(path: Path, grid: dict) -> None:
    write_json_atomically(path, grid)


def retire_stale_cells(grid: dict, task: str, checkpoint_dev_metrics: dict) -> list[str]:
    """Move ``task``'s cells that ran on another checkpoint than the current one into
    ``grid["superseded"]`` (so that they are re-run, and no report mixes two checkpoints).

    A cell names its checkpoint by the checkpoint's dev metrics (``checkpoint_dev_metrics``); cells from
    before that field are taken to have run on the checkpoint of the task's recorded baseline.
    Returns the keys moved.
    """
    baseline = grid.get("baselines", {}).get(task, {}).get("dev_metrics")
    moved = []
    for key, cell in list(grid["cells"].items()):
        if cell.get("task") != task:
            continue
        ran_on = cell.get("checkpoint_dev_metrics", baseline)
        if ran_on is not None and ran_on != checkpoint_dev_metrics:
            grid.setdefault("superseded", {})[key] = dict(cell, checkpoint_dev_metrics=ran_on)
            del grid["cells"][key]
            moved.append(key)
    if moved and baseline != checkpoint_dev_metrics:
        grid["baselines"].pop(task, None)
    return moved


def machine_info(threads: int) -> dict:
    import finetune_recipe
    import torch

    import kprune_ext
    return {
        "cpu": finetune_recipe.cpu_name(), "cores": os.cpu_count(), "threads": threads,
        "torch": torch.__version__, "python": platform.python_version(),
        "kprune_extension": bool(kprune_ext.EXTENSION_LOADED),
        "note": "cores shared with other jobs while the grid ran: seconds and latencies are noisy upper bounds",
    }


DEFAULT_OUTPUT = HERE / "results" / "grid.json"
BF16_OUTPUT = HERE / "results" / "grid-bf16.json"   # --study bf16: its own float32 cells on the code it ran with


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/kprune-bench"))
    parser.add_argument("--tasks", nargs="+", default=TASK_ORDER)
    parser.add_argument("--methods", nargs="+", default=None, choices=list(METHODS),
                        help="default: the main methods and ablations; with --study candidates: kprune and the candidates")
    parser.add_argument("--reductions", nargs="+", type=float, default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="the first is the fixed seed of every cell; the others run at 50%% and 80%% only "
                             "(at every reduction with --study candidates)")
    parser.add_argument("--study", choices=("grid", "candidates", "bf16"), default="grid",
                        help="candidates: plain K-prune (the paper's recipe) and each candidate improvement at "
                             "60/70/80%%, three seeds each; bf16: K-prune measured in float32 and in bfloat16 at "
                             "50/80%%, three seeds each; both into the same grid.json")
    parser.add_argument("--num-tokens", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None,
                        help="default: benchmarks/results/grid.json (grid-bf16.json with --study bf16)")
    parser.add_argument("--list", action="store_true", help="print the planned cells and whether each is done")
    parser.add_argument("--no-finetune", action="store_true",
                        help="skip tasks without a fine-tuned checkpoint instead of fine-tuning them first")
    parser.add_argument("--no-report", action="store_true", help="do not render RESULTS.md and the plots at the end")
    parser.add_argument("--cell", nargs=4, metavar=("TASK", "METHOD", "REDUCTION", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--cell-output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    data_dir = args.data_dir.expanduser().resolve()
    cache_dir = args.cache_dir.expanduser().resolve()

    if args.cell:
        task, method, reduction, seed = args.cell
        record = run_cell(task, method, float(reduction), int(seed), data_dir, cache_dir, args.num_tokens,
                          args.threads)
        args.cell_output.write_text(json.dumps(record))
        return 0

    from tqdm.auto import tqdm

    from finetune import read_record

    args.output = args.output or (BF16_OUTPUT if args.study == "bf16" else DEFAULT_OUTPUT)
    study_methods, study_reductions = {"candidates": (["kprune"] + CANDIDATE_METHODS, CANDIDATE_REDUCTIONS),
                                       "bf16": (BF16_METHODS, BF16_REDUCTIONS)}.get(
        args.study, (MAIN_METHODS + OTHER_METHODS, REDUCTIONS))
    every_seed = args.study != "grid"
    args.methods = args.methods or study_methods
    args.reductions = args.reductions or study_reductions
    args.seeds = args.seeds or (CANDIDATE_SEEDS if every_seed else [0] + EXTRA_SEEDS)
    cells = planned_cells(args.tasks, args.methods, args.reductions, args.seeds, every_seed=every_seed)
    grid = load_grid(args.output)
    if args.list:
        for cell in cells:
            print(cell_key(*cell), "done" if cell_key(*cell) in grid["cells"] else "missing")
        return 0
    missing_checkpoints = [t for t in dict.fromkeys(c[0] for c in cells)
                           if read_record(cache_dir / "finetuned" / t) is None]
    if missing_checkpoints and not args.no_finetune:
        logger.info("fine-tuning first (no checkpoint yet): %s", ", ".join(missing_checkpoints))
        subprocess.run([sys.executable, str(HERE / "finetune_recipe.py"), "--data-dir", str(data_dir),
                        "--cache-dir", str(cache_dir), "--threads", str(args.threads), "--tasks", *missing_checkpoints])
    with locked(args.output):  # another runner may share the results file
        grid = load_grid(args.output)
        grid["meta"] = {
            "command": "python benchmarks/run_grid.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
            # the whole grid at this sample size: what RESULTS.md tells a reader to run
            "full_command": canonical_command(args.num_tokens, args.threads),
            "machine": machine_info(args.threads),
            "num_tokens": args.num_tokens,
            "methods": METHODS,
            "latency_shapes": [list(s) for s in LATENCY_SHAPES],
            "updated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        grid.setdefault("baselines", {})
        for task in dict.fromkeys(c[0] for c in cells):
            record = read_record(cache_dir / "finetuned" / task)
            moved = retire_stale_cells(grid, task, record["dev_metrics"]) if record else []
            if moved:
                logger.info("%s: checkpoint changed; %d cells of the previous one moved to 'superseded' "
                            "and re-run", task, len(moved))
        write_grid(args.output, grid)
    def pending() -> list[tuple]:
        """Cells not yet in the grid whose checkpoint exists, re-read before every cell so that tasks
        fine-tuned while the grid runs join it in priority order."""
        done = {k for k, c in load_grid(args.output)["cells"].items() if c.get("num_tokens_requested") == args.num_tokens}
        ready = {t for t in {c[0] for c in cells} if read_record(cache_dir / "finetuned" / t) is not None}
        return [c for c in cells if cell_key(*c) not in done and c[0] in ready]

    todo = pending()
    waiting = sorted({c[0] for c in cells} - {c[0] for c in cells if read_record(cache_dir / "finetuned" / c[0])})
    logger.info("%d cells planned, %d done, %d ready to run; tasks without a checkpoint yet: %s",
                len(cells), len(cells) - len([c for c in cells if cell_key(*c) not in grid["cells"]]), len(todo), waiting or "none")
    failures = 0
    failed: set[str] = set()
    bar = tqdm(total=len(cells), initial=len(cells) - len([c for c in cells if cell_key(*c) not in grid["cells"]]),
               desc="grid", unit="cell", dynamic_ncols=True)
    while True:
        todo = [c for c in pending() if cell_key(*c) not in failed]
        if not todo:
            break
        task, method, reduction, seed = todo[0]
        key = cell_key(task, method, reduction, seed)
        bar.set_postfix_str(key)
        record = read_record(cache_dir / "finetuned" / task)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "cell.json"
            command = [sys.executable, str(Path(__file__).resolve()), "--data-dir", str(data_dir),
                       "--cache-dir", str(cache_dir), "--num-tokens", str(args.num_tokens),
                       "--threads", str(args.threads), "--cell", task, method, repr(reduction), str(seed),
                       "--cell-output", str(out)]
            started = time.perf_counter()
            proc = subprocess.run(command)
            if proc.returncode != 0 or not out.is_file():
                failures += 1
                failed.add(key)
                logger.error("%s failed (exit %d); it stays missing and is retried on the next run", key,
                             proc.returncode)
                continue
            result = json.loads(out.read_text())
        result["cell_seconds"] = time.perf_counter() - started
        result["num_tokens_requested"] = args.num_tokens
        result["checkpoint_dev_metrics"] = record["dev_metrics"]
        with locked(args.output):
            grid = load_grid(args.output)
            grid["cells"][key] = result
            grid.setdefault("baselines", {})[task] = {
                "metric_name": result["metric_name"], "metric": result["unpruned_metric"],
                "dev_metrics": record["dev_metrics"], "source": "finetune.json of the checkpoint (same evaluate settings)",
                "params": result["params_before"], "flops": result["flops_before"],
            }
            grid["meta"]["updated_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            write_grid(args.output, grid)
        bar.update(1)
        logger.info("%s: %s %.4f (unpruned %.4f), FLOPs -%.1f%%, prune %.0f s, speedup b32 %.2fx b1 %.2fx",
                    key, result["metric_name"], result["metric"], result["unpruned_metric"],
                    100 * result["flops_reduction"], result["prune_seconds"],
                    result["latency"]["b32_s128"]["speedup"], result["latency"]["b1_s128"]["speedup"])
    bar.close()
    if not args.no_report:
        import report
        committed = args.output.resolve() == DEFAULT_OUTPUT
        # another output gets its report and plots beside it (grid.md, grid-plots/), never the committed ones
        plots = DEFAULT_OUTPUT.parent / "plots" if committed else args.output.with_name(args.output.stem + "-plots")
        target = HERE / "RESULTS.md" if committed else args.output.with_suffix(".md")
        # the committed discussion is about the committed grid only
        report.main(["--grid", str(args.output), "--output", str(target), "--plots", str(plots)]
                    + ([] if committed else ["--no-discussion", "--no-larger-sample"]))
        logger.info("report written to %s", target)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
