"""The floor: a whole K-prune run against one forward-and-backward pass with mask gradients.

    python benchmarks/bench_floor.py                      # fine-tuned MiniLM SST-2, 100,000 tokens
    python benchmarks/bench_floor.py --num-tokens 15000 --flops-reduction 0.7

K-prune's step k runs sublayers k..2L-1 forward and (from k = 1) backward to their activations, so a
whole run needs about L + 1/2 passes of the full model (less the backward at k = 0). This times, in one
process, on the same length-sorted compute batches (the pruner's own):

* the pass: the pruner's own forward of every sublayer keeping the autograd graph, one backward to the
  input of every output projection (the mask gradients: Σ a·g per unit) and the knowledge statistics,
  as ``KPruner`` does it with ``recompute=False`` at a step that measures every sublayer;
* the run: ``kprune.prune`` on a fresh copy of the model with the default settings.

Reports run seconds, pass seconds, run / ((L + 1/2) · pass), the run's per-phase seconds and the peak RSS
of each, prints a table and writes benchmarks/results/floor.json (one entry per case, replaced on re-run).
With ``--gemm-account`` it also runs the prune once more under torch's profiler and reports the seconds and
FLOPs of its GEMMs by dtype (benchmarks/gemm_account.py): what the run would cost if nothing but its matrix
products took time (the profiler keeps every op's event: a 20,000-token MiniLM MRPC case was seen at 14 GB of
RSS while profiled). With ``--thin-account`` it times the same run on a thin copy of the model (:func:`thin_copy`:
the same layers and heads, 4 dimensions per head, seeded random weights; BERT-layout configs), on the same
samples and batches: the part of a run that does not grow with the matrix sizes (Python, dispatch, each
kernel's fixed cost, the per-batch loop, the attention's work per key that does not shrink with the head size); with
``--gemm-account`` too, the thin run's own GEMM seconds as well.
"""
from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from json_results import write_json_atomically  # noqa: E402
from run_grid import _reset_peak_rss as reset_peak_rss, _rss_mb as rss_mb  # noqa: E402  (peak RSS of a phase)

RESULTS = Path(__file__).resolve().parent / "results" / "floor.json"
CACHE = Path.home() / ".cache" / "kprune-bench"


def load(model_dir: str, data_dir: str, task: str, num_tokens: int, seed: int):
    """The fine-tuned checkpoint (a question-answering model for a QA task) and a pruning sample drawn from its
    task's training split."""
    import transformers

    from kprune.data import sample_features
    from kprune.tasks import get_task

    transformers.logging.set_verbosity_error()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    cls = (transformers.AutoModelForQuestionAnswering if get_task(task).kind == "qa"
           else transformers.AutoModelForSequenceClassification)
    model = cls.from_pretrained(model_dir).eval()
    samples = sample_features(task, data_dir, tokenizer, num_tokens=num_tokens, seed=seed)
    return model, samples


def time_pass(model, samples, kind: str, config) -> tuple[float, float]:
    """Seconds of one forward-and-backward pass of every sublayer with mask gradients (the pruner's
    graph pass over its own batches), after an untimed no-gradient pass takes the teacher's outputs;
    returns (wall seconds, CPU seconds of this process)."""
    import torch

    from kprune.knowledge import UnitStatistics
    from kprune.pruner import KPruner

    pruner = KPruner(model, samples, kind, 0.5, config)
    pruner._setup()
    num_sub = 2 * pruner.student.num_layers
    pruner._measure(0)                     # the teacher's outputs, as step 0 takes them
    logits = list(pruner.teacher_logits)
    groups = pruner.groups.count if pruner.groups is not None else 0
    stats = {j: UnitStatistics.zeros(pruner._widths(j)[0], pruner.device, groups) for j in range(num_sub)}
    started, cpu = time.perf_counter(), time.process_time()
    with pruner.measure_precision(1):   # the precision of a step with gradients
        for index, batch in enumerate(pruner.batches):
            offsets = batch.token_offsets()
            rows = pruner.groups.of_rows(batch) if pruner.groups is not None else None
            # k = 0 with gradients: every sublayer forward and backward
            pruner._graph_pass(0, index, batch, pruner.tuner.student_cache[index], True, stats, (offsets, rows))
    for st in stats.values():
        st.finish()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    pruner.teacher_logits = logits
    pruner.tuner.release()
    del pruner
    return seconds, cpu


def time_run(model, samples, kind: str, reduction: float, config) -> tuple[float, float, dict]:
    import kprune

    started, cpu = time.perf_counter(), time.process_time()
    result = kprune.prune(copy.deepcopy(model), samples, kind, reduction, config)
    return time.perf_counter() - started, time.process_time() - cpu, result.report


def thin_copy(model, head_size: int = 4):
    """The model's class and config with ``head_size`` dimensions per head (hidden = heads x head_size) and an
    FFN four times that, seeded random weights: the same number of layers, heads, batches and kernel calls as
    a run on ``model``, with 1/(original head size / head_size)^2 of its GEMM FLOPs (1/64 for MiniLM)."""
    import torch

    config = copy.deepcopy(model.config)
    config.hidden_size = config.num_attention_heads * head_size
    config.intermediate_size = 4 * config.hidden_size
    torch.manual_seed(0)
    return type(model)(config).eval()


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=RESULTS.parent, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def measure(model, samples, kind: str, reduction: float, config) -> dict:
    """Pass, then run, in this process: seconds, ratio and peak RSS of each."""
    num_layers = model.config.num_hidden_layers
    exact = reset_peak_rss()
    pass_seconds, pass_cpu = time_pass(model, samples, kind, config)
    pass_peak = rss_mb("VmHWM") if exact else None
    reset_peak_rss()
    run_seconds, run_cpu, report = time_run(model, samples, kind, reduction, config)
    run_peak = rss_mb("VmHWM") if exact else report.get("peak_rss_mb")
    floor = (num_layers + 0.5) * pass_seconds
    return {"num_layers": num_layers, "num_samples": report["num_samples"], "num_tokens": report["num_tokens"],
            "pass_seconds": round(pass_seconds, 3), "run_seconds": round(run_seconds, 3),
            "passes_per_run": round(run_seconds / pass_seconds, 3), "floor_passes": num_layers + 0.5,
            "ratio_to_floor": round(run_seconds / floor, 3), "phase_seconds": report["seconds"],
            "pass_peak_rss_mb": pass_peak and round(pass_peak, 1), "run_peak_rss_mb": run_peak and round(run_peak, 1),
            "flops_reduction": round(report["flops_reduction"], 4),
            # on a shared machine the process's CPU seconds (one thread) are steadier than wall seconds
            "pass_cpu_seconds": round(pass_cpu, 3), "run_cpu_seconds": round(run_cpu, 3),
            "cpu_ratio_to_floor": round(run_cpu / ((num_layers + 0.5) * pass_cpu), 3)}


def record(entry: dict, path: Path = RESULTS) -> None:
    """Add this case to the results file, replacing an earlier run of the same case."""
    import json

    data = json.loads(path.read_text()) if path.exists() else {}
    data["runs"] = [r for r in data.get("runs", []) if r.get("case") != entry["case"]] + [entry]
    write_json_atomically(path, data)


def table(entry: dict) -> str:
    phases = ", ".join(f"{k} {v:.1f}" for k, v in entry["phase_seconds"].items() if k != "total")
    return "\n".join([
        "| tokens | pass s | run s | passes per run | floor (L+1/2) | run / floor | run / floor (CPU s) | "
        "pass peak MB | run peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {entry['num_tokens']:,} | {entry['pass_seconds']:.1f} | {entry['run_seconds']:.1f} | "
        f"{entry['passes_per_run']:.2f} | {entry['floor_passes']} | {entry['ratio_to_floor']:.3f}x | "
        f"{entry['cpu_ratio_to_floor']:.3f}x | "
        f"{entry['pass_peak_rss_mb']} | {entry['run_peak_rss_mb']} |",
        f"run phases (s): {phases}"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(CACHE / "finetuned" / "sst2"), help="fine-tuned checkpoint folder")
    parser.add_argument("--data", default="/work/shared/data/glue/SST-2", help="the task's GLUE folder")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--num-tokens", type=int, default=100_000)
    parser.add_argument("--flops-reduction", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--measure-dtype", default="float32", help="KPruneConfig.measure_dtype of the pass and the run")
    parser.add_argument("--no-record", action="store_true", help="do not write the results file")
    parser.add_argument("--gemm-account", action="store_true",
                        help="also profile one more run: its GEMMs' seconds and FLOPs by dtype (gemm_account.py)")
    parser.add_argument("--thin-account", action="store_true",
                        help="also time the same run on a thin copy of the model (4 dimensions per head): its fixed costs")
    args = parser.parse_args(argv)

    import torch

    import kprune
    from kprune.tasks import get_task

    torch.set_num_threads(args.threads)
    model, samples = load(args.model, args.data, args.task, args.num_tokens, args.seed)
    config = kprune.KPruneConfig(progress=False, seed=args.seed, measure_dtype=args.measure_dtype)
    kind = get_task(args.task).kind
    result = measure(model, samples, kind, args.flops_reduction, config)
    from gemm_account import profile_run

    def profiled(m) -> dict:   # the same prune of a fresh copy of m, under the profiler (gemm_account.py)
        return profile_run(lambda: kprune.prune(copy.deepcopy(m), samples, kind, args.flops_reduction, config))

    if args.gemm_account:
        result["gemm_account"] = profiled(model)
    if args.thin_account:
        thin = thin_copy(model)
        seconds, cpu, report = time_run(thin, samples, kind, args.flops_reduction, config)
        result["thin_run"] = {"hidden_size": thin.config.hidden_size, "intermediate_size": thin.config.intermediate_size,
                              "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
                              "phase_seconds": report["seconds"]}
        if args.gemm_account:   # the thin run's own GEMMs, so that its rest beside them can be told apart
            result["thin_run"]["gemm_seconds"] = profiled(thin)["gemm_seconds"]
    entry = {"case": f"{Path(args.model).name}, {args.task}, {args.num_tokens} tokens, "
                     f"{args.flops_reduction:.0%}, {args.threads} thread(s)"
                     + ("" if args.measure_dtype == "float32" else f", {args.measure_dtype}"),
             "command": "python benchmarks/bench_floor.py " + " ".join(argv if argv is not None else sys.argv[1:]),
             "commit": _commit(), "threads": torch.get_num_threads(),
             "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), **result}
    if not args.no_record:
        record(entry, args.output)
    print(entry["case"])
    print(table(entry))
    if args.gemm_account:
        gemm = entry["gemm_account"]
        by_dtype = "; ".join(f"{d}: {r['seconds']:.1f} s, {r['gflop']:,.0f} GFLOP, {r['gflop_per_s']} GFLOP/s"
                             for d, r in gemm["gemm"].items())
        print(f"GEMMs of a profiled run: {gemm['gemm_seconds']:.1f} s of the plain run's {entry['run_seconds']:.1f} s "
              f"({by_dtype})")
    if args.thin_account:
        thin = entry["thin_run"]
        own = f", {thin['gemm_seconds']:.1f} s of it its GEMMs" if "gemm_seconds" in thin else ""
        print(f"the same run on a thin copy (hidden {thin['hidden_size']}, FFN {thin['intermediate_size']}): "
              f"{thin['seconds']:.1f} s{own}; the plain run {entry['run_seconds']:.1f} s")
    return entry


if __name__ == "__main__":
    main()
