"""The held-out check of a candidate improvement (issue 11): plain K-prune against the candidate on fine-tuned
checkpoints that no candidate was chosen on.

    python benchmarks/finetune_trials.py --task qqp --trial seed1 seed=1       # a new checkpoint
    python benchmarks/heldout_check.py --checkpoint qqp=seed1 --checkpoint mrpc=e5-lr1e-4-b16

Each checkpoint is a finished fine-tuning trial (``<cache-dir>/trials/<task>/<trial>``, made by
benchmarks/finetune_trials.py): the task's recipe with another fine-tuning seed, or settings a re-tuning tried
and did not adopt. They are linked into ``<cache-dir>/heldout/finetuned/<task>`` and run by run_grid.py with
that cache folder and its own results file (benchmarks/results/grid-heldout.json), so held-out cells never mix
with the grid the candidates were chosen on; the cells are resumable like the grid's. candidates_report.py
renders the comparison (``--heldout``); report.py adds it to RESULTS.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run_grid  # noqa: E402  (puts python/ and examples/ on the path)
from finetune import read_record  # noqa: E402
from grid_spec import CANDIDATE_METHODS, CANDIDATE_SEEDS  # noqa: E402
from json_results import locked  # noqa: E402

OUTPUT = HERE / "results" / "grid-heldout.json"


def parse_checkpoint(text: str) -> tuple[str, str]:
    task, sep, trial = text.partition("=")
    if not sep or not task or not trial:
        raise argparse.ArgumentTypeError(f"--checkpoint {text!r}: expected TASK=TRIAL, e.g. qqp=seed1")
    return task, trial


def link_checkpoints(cache_dir: Path, checkpoints: list[tuple[str, str]]) -> Path:
    """``<cache-dir>/heldout`` with ``finetuned/<task>`` pointing at each trial and ``data`` at the cache's
    prepared data (QQP's split); refuses a missing or unfinished trial before anything is linked."""
    sources = {}
    for task, trial in checkpoints:
        source = cache_dir / "trials" / task / trial
        if read_record(source) is None:
            raise SystemExit(f"--checkpoint {task}={trial}: no finished trial in {source} "
                             f"(make it with benchmarks/finetune_trials.py --task {task} --trial {trial} ...)")
        if task in sources:
            raise SystemExit(f"--checkpoint {task}: given twice; one held-out checkpoint per task and results file")
        sources[task] = source
    heldout = cache_dir / "heldout"
    (heldout / "finetuned").mkdir(parents=True, exist_ok=True)
    links = [(heldout / "data", cache_dir / "data")] + [(heldout / "finetuned" / t, s) for t, s in sources.items()]
    for link, target in links:
        if link.is_symlink() or link.exists():
            if link.resolve() == target.resolve():
                continue
            if not link.is_symlink():
                raise SystemExit(f"{link} exists and is not a link made by this script: move it away first")
            link.unlink()
        os.symlink(target, link, target_is_directory=True)
    return heldout


def record_checkpoints(output: Path, cache_dir: Path, checkpoints: list[tuple[str, str]]) -> None:
    """Name each task's held-out checkpoint in the results file (its cells carry only its dev metrics)."""
    with locked(output):
        grid = run_grid.load_grid(output)
        named = grid.setdefault("checkpoints", {})
        for task, trial in checkpoints:
            record = read_record(cache_dir / "trials" / task / trial)
            named[task] = {"trial": trial, "settings": record["settings"], "dev_metrics": record["dev_metrics"]}
        run_grid.write_grid(output, grid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=parse_checkpoint, action="append", required=True,
                        metavar="TASK=TRIAL", help="a finished fine-tuning trial of TASK (repeat for more tasks)")
    parser.add_argument("--candidate", default="kprune-head-refit", choices=CANDIDATE_METHODS)
    parser.add_argument("--reductions", nargs="+", type=float, default=[0.7, 0.8])
    parser.add_argument("--seeds", nargs="+", type=int, default=CANDIDATE_SEEDS)
    parser.add_argument("--num-tokens", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/kprune-bench"))
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    cache_dir = args.cache_dir.expanduser().resolve()
    heldout = link_checkpoints(cache_dir, args.checkpoint)
    record_checkpoints(args.output, cache_dir, args.checkpoint)
    tasks = list(dict.fromkeys(task for task, _ in args.checkpoint))
    return run_grid.main(["--study", "candidates", "--tasks", *tasks, "--methods", "kprune", args.candidate,
                          "--reductions", *map(str, args.reductions), "--seeds", *map(str, args.seeds),
                          "--num-tokens", str(args.num_tokens), "--threads", str(args.threads),
                          "--data-dir", str(args.data_dir), "--cache-dir", str(heldout),
                          "--output", str(args.output), "--no-finetune", "--no-report"])


if __name__ == "__main__":
    sys.exit(main())
