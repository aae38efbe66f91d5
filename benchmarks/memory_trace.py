"""Peak memory of one grid cell's K-prune run, step by step: where a run's peak RSS is reached.

    python benchmarks/memory_trace.py [--task sst2] [--reduction 0.5] [--num-tokens 20000] [--seed 0]
        [--config '{"compute_batch_tokens": null}']

Loads the grid's fine-tuned checkpoint and pruning sample as run_grid.py's cells do (the paper's recipe,
``KPruneConfig.paper`` plus ``--config``), resets the kernel's peak-RSS mark (VmHWM) right before the run
(as the cells and the side-by-side table measure it) and again after every sublayer step, and records the
resident set before the run, each step's peak and the run's peak. Appends one entry per invocation to
benchmarks/results/memory_trace.json (the same task, reduction, seed, config and label replace their old
entry). Run with PYTHONPATH at another checkout's python/ to measure that code (say so with --label).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from json_results import write_json_atomically  # noqa: E402
from run_grid import _reset_peak_rss as reset_peak, _rss_mb as rss_mb  # noqa: E402

RESULTS = HERE / "results" / "memory_trace.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--reduction", type=float, default=0.5)
    parser.add_argument("--num-tokens", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default="{}", help="KPruneConfig settings on top of the paper's recipe (JSON)")
    parser.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/kprune-bench"))
    parser.add_argument("--machine", default="", help="how loaded the machine was, recorded with the numbers")
    parser.add_argument("--label", default="", help="tells runs of other code apart (e.g. 'before: commit abc1234')")
    args = parser.parse_args(argv)

    import torch
    import transformers

    import kprune
    from finetune_recipe import task_data
    from kprune.data import sample_features
    from kprune.tasks import get_task

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    cache = args.cache_dir.expanduser()
    spec, checkpoint = get_task(args.task), cache / "finetuned" / args.task
    data = task_data(args.task, args.data_dir.expanduser().resolve(), cache)
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    cls = (transformers.AutoModelForQuestionAnswering if spec.kind == "qa"
           else transformers.AutoModelForSequenceClassification)
    model = cls.from_pretrained(checkpoint).eval()
    max_length, doc_stride = spec.lengths()
    samples = sample_features(args.task, data, tokenizer, num_tokens=args.num_tokens, seed=args.seed,
                              max_length=max_length, doc_stride=doc_stride)
    settings = json.loads(args.config)
    config = kprune.KPruneConfig.paper(progress=False, **settings)

    before = rss_mb("VmRSS")
    if not reset_peak():
        raise SystemExit("cannot reset the peak-RSS mark (/proc/self/clear_refs): no per-step peaks here")
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    pruner = kprune.KPruner(model, samples, spec.kind, args.reduction, config)
    steps, run_peak = [], 0.0
    for step in pruner.steps():
        peak = rss_mb("VmHWM")
        run_peak = max(run_peak, peak)
        steps.append({"sublayer": step.sublayer, "peak_mb": round(peak, 1), "rss_mb": round(rss_mb("VmRSS"), 1)})
        reset_peak()
    run_peak = max(run_peak, rss_mb("VmHWM"))   # the end of the run (caches released, weights owned)
    seconds = time.perf_counter() - started
    report = pruner.report()
    entry = {"task": args.task, "reduction": args.reduction, "num_tokens": report["num_tokens"], "seed": args.seed,
             "config": settings, "rss_before_mb": round(before, 1), "peak_mb": round(run_peak, 1),
             "seconds": round(seconds, 1), "steps": steps, "num_batches": len(pruner.batches),
             "heads_kept": report["heads_kept"], "machine": args.machine, "label": args.label,
             "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "command": "python benchmarks/memory_trace.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    old = json.loads(RESULTS.read_text())["runs"] if RESULTS.is_file() else []
    key = (args.task, args.reduction, args.seed, settings, args.label)
    same = lambda e: (e["task"], e["reduction"], e["seed"], e["config"], e.get("label", "")) == key
    write_json_atomically(RESULTS, {"runs": [e for e in old if not same(e)] + [entry]})
    print(f"{args.task} {args.reduction:.0%} {settings or 'defaults'}: RSS before {before:.0f} MB, "
          f"peak {run_peak:.0f} MB, {seconds:.1f} s, {len(pruner.batches)} compute batches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
