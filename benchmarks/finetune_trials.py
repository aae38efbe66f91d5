"""Try fine-tuning settings for one task and record each trial's dev score (re-tuning a recipe).

    python benchmarks/finetune_trials.py --task mrpc --trial e5-lr1e-4-b16 epochs=5 learning_rate=1e-4 batch_size=16
    python benchmarks/finetune_trials.py --task mrpc --adopt e5-lr1e-4-b16

A trial starts from the task's recipe in finetune_recipe.RECIPES, overrides the given settings and trains
into ``<cache-dir>/trials/<task>/<name>`` (reused when its settings match, so a killed run resumes).
Settings, dev metrics, train loss and seconds go to ``benchmarks/results/finetune_trials.json``.
``--adopt NAME`` copies a finished trial over ``<cache-dir>/finetuned/<task>`` (the old checkpoint is
moved to ``<cache-dir>/finetuned-previous/<task>``) and prints the settings to put into RECIPES, which
finetune_recipe.py then reuses without training. Trials are scored on the dev set, which is also the
set the grid reports: the choice among a handful of trials is the usual GLUE practice, stated in RESULTS.md.
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "python"))
sys.path.insert(0, str(HERE.parent / "examples"))

import torch  # noqa: E402

from finetune import ensure_finetuned, read_record  # noqa: E402
from json_results import locked  # noqa: E402
from finetune_recipe import RECIPES, cpu_name, load_results, model_dir, task_data, write_results  # noqa: E402

logger = logging.getLogger("finetune_trials")


def parse_overrides(items: list[str]) -> dict:
    """``key=value`` pairs into a dict (values as Python literals); refuse keys finetune() lacks."""
    allowed = {"epochs", "learning_rate", "batch_size", "max_length", "doc_stride", "max_train_examples",
               "seed", "warmup_ratio", "weight_decay", "max_eval_examples"}
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            raise SystemExit(f"bad setting {item!r}: expected key=value with key one of {sorted(allowed)}")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise SystemExit(f"bad value in {item!r}: expected a number or None") from None
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(RECIPES))
    parser.add_argument("--trial", help="name of the trial (its folder under <cache-dir>/trials/<task>)")
    parser.add_argument("--adopt", help="make this finished trial the task's checkpoint")
    parser.add_argument("settings", nargs="*", help="key=value overrides of the task's recipe")
    parser.add_argument("--data-dir", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/kprune-bench"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=HERE / "results" / "finetune_trials.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cache_dir = args.cache_dir.expanduser().resolve()

    if args.adopt:
        source = cache_dir / "trials" / args.task / args.adopt
        record = read_record(source)
        if record is None:
            raise SystemExit(f"no finished trial {args.adopt!r} in {source}")
        target = cache_dir / "finetuned" / args.task
        staging = target.with_name(f".{args.task}.adopting")   # copied whole before anything is replaced
        if staging.exists():
            shutil.rmtree(staging)
        shutil.copytree(source, staging)
        if target.exists():
            previous = cache_dir / "finetuned-previous" / args.task
            previous.parent.mkdir(parents=True, exist_ok=True)
            if previous.exists():
                shutil.rmtree(previous)
            os.replace(target, previous)
        os.replace(staging, target)
        keys = ("epochs", "learning_rate", "batch_size", "max_length", "doc_stride", "max_train_examples",
                "warmup_ratio", "weight_decay", "max_eval_examples")
        print(json.dumps({k: record["settings"][k] for k in keys}, indent=1))
        return 0
    if not args.trial:
        raise SystemExit("give --trial NAME (with key=value settings) or --adopt NAME")

    torch.set_num_threads(args.threads)
    settings = dict(RECIPES[args.task]["settings"], **parse_overrides(args.settings))
    data = task_data(args.task, args.data_dir.expanduser().resolve(), cache_dir)
    output = cache_dir / "trials" / args.task / args.trial
    ensure_finetuned(model_dir(), args.task, data, output, num_threads=args.threads, **settings)
    record = read_record(output)
    with locked(args.results):  # trials may finish side by side
        record_trial(args, settings, record)
    logger.info("%s %s: dev %s", args.task, args.trial, record["dev_metrics"])
    return 0


def record_trial(args, settings: dict, record: dict) -> None:
    results = load_results(args.results)
    results["machine"] = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}"
    results.setdefault("trials", {}).setdefault(args.task, {})[args.trial] = {
        "changed": " ".join(args.settings), "settings": settings, "dev_metrics": record["dev_metrics"], "main_metric": record["main_metric"],
        "train_loss": record["train_loss"], "num_train_features": record["num_train_features"],
        "train_seconds": record["train_seconds"], "eval_seconds": record["eval_seconds"],
        "threads": record["num_threads"], "conditions": os.environ.get("KPRUNE_BENCH_CONDITIONS", "not stated"),
    }
    write_results(args.results, results)


if __name__ == "__main__":
    sys.exit(main())
