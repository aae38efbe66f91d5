"""The original implementations as peers: the K-prune paper's code and Kwon et al.'s code, unmodified,
on the grid's fine-tuned checkpoints, sample size, FLOPs model and evaluation.

    python benchmarks/run_originals.py --paper-code DIR --kwon-code DIR --python VENV/bin/python
        [--tasks sst2 stsb mrpc qqp squad] [--reductions 0.5 0.8] [--seeds 0] [--num-tokens 20000]
        [--checkpoint-dir ~/.cache/kprune-bench/finetuned] [--data-dir ../shared/data]

DIR are local checkouts (``git clone https://github.com/snudm-starlab/K-prune``,
``git clone https://github.com/WoosukKwon/retraining-free-pruning``); ``--python`` is the interpreter of a
virtual environment with the library versions they need (benchmarks/RESULTS.md says how to make it).
Each cell (task, method = kprune-paper | kwon-paper, reduction, seed) runs their entry point in a child
process through benchmarks/originals/launch.py (CPU, local data, no network), with as many samples as
kprune draws for ``--num-tokens`` at that seed. Their result is then loaded into our model (Kwon: the
tuned masks folded in by kprune.apply_masks; K-prune: their kept units and tuned weights) and scored
with kprune.evaluation.evaluate on the dev split with the checkpoint's recorded settings; the achieved
reduction comes from kprune.model_flops at the average length of kprune's sample (as in the grid).
Seconds and peak RSS are those of their pruning window (launch.py, measured as run_grid.py measures
kprune), next to the whole child process's (os.wait4). Results: benchmarks/results/originals.json,
rewritten atomically after each cell; finished cells are skipped, so a run resumes.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "python"))
sys.path.insert(0, str(REPO / "examples"))
sys.path.insert(0, str(HERE))

from json_results import locked, write_json_atomically  # noqa: E402
from grid_spec import cell_key  # noqa: E402
from finetune_recipe import task_data  # noqa: E402
from originals.shim import SPLIT_FILES, glue_record, squad_record, write_split  # noqa: E402

logger = logging.getLogger("run_originals")
METHODS = ("kprune-paper", "kwon-paper")
DEFAULT_OUTPUT = HERE / "results" / "originals.json"
# The README's settings for the paper's code (scripts/run.sh): lambda_pred, lambda_rep, mu, T, KPWT on.
PAPER_SETTINGS = ["--lam_pred", "1.0", "--lam_rep", "2.5e-4", "--mu", "64", "--T", "2", "--sublayerwise_tuning"]


# ------------------------------------------------------------------------------------------------
# Bookkeeping (no model needed)
# ------------------------------------------------------------------------------------------------

def planned(tasks, methods, reductions, seeds) -> list[tuple]:
    """Cells in run order: per seed and task, every reduction, the paper's code first."""
    return [(t, m, r, s) for s in seeds for t in tasks for r in reductions for m in methods]


def pending(cells: list[tuple], results: dict, num_tokens: int) -> list[tuple]:
    """Cells not yet finished at this sample size."""
    done = {k for k, c in results.get("cells", {}).items() if c.get("num_tokens_requested") == num_tokens}
    return [c for c in cells if cell_key(*c) not in done]


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"cells": {}}


def write_results(path: Path, results: dict) -> None:
    write_json_atomically(path, results)


def their_arguments(method: str, task: str, checkpoint: Path, reduction: float, seed: int, out: Path) -> list[str]:
    """Their command line. The paper's --constraint is the fraction of FLOPs removed; Kwon's is the
    fraction kept."""
    common = ["--model_name", str(checkpoint), "--ckpt_dir", str(checkpoint), "--task_name", task,
              "--seed", str(seed)]
    if method == "kprune-paper":
        # main.py writes to outputs/<model_name>/<exp_name>: an absolute exp_name puts it in ``out``
        return common + ["--exp_name", str(out), "--constraint", repr(reduction)] + PAPER_SETTINGS
    if method == "kwon-paper":
        return common + ["--output_dir", str(out), "--constraint", repr(round(1.0 - reduction, 10))]
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def achieved_reduction(heads_kept, neurons_kept, heads_full, neurons_full, seq_len, hidden, head_size) -> float:
    """1 - FLOPs(pruned) / FLOPs(unpruned) with kprune's FLOPs model."""
    import kprune
    return 1.0 - (kprune.model_flops(heads_kept, neurons_kept, seq_len, hidden, head_size)
                  / kprune.model_flops(heads_full, neurons_full, seq_len, hidden, head_size))


# ------------------------------------------------------------------------------------------------
# Data and sample size
# ------------------------------------------------------------------------------------------------

def export_rows(task: str, data: Path, out: Path, max_eval_examples: int | None = None) -> Path:
    """Our copy of the task's train and dev splits as the HF ``glue`` / ``squad`` rows their loader
    expects. SQuAD's dev split holds the questions our evaluation scores (its first ``max_eval_examples``),
    so that their in-process evaluation scores the same ones."""
    from kprune.data import load_examples

    if max_eval_examples is not None:   # a folder of its own per dev-set size (the loader reads <data>/<task>)
        out = out / f"{task}-dev-first{max_eval_examples}"
    folder = out / task
    for split, file in SPLIT_FILES.items():
        if not (folder / file).is_file():
            examples = load_examples(task, data, "train" if split == "train" else "dev")
            if task == "squad":
                if split == "validation" and max_eval_examples is not None:
                    examples = examples[:max_eval_examples]
                rows = (squad_record(e.id, e.question, e.context, e.answers) for e in examples)
            else:
                rows = (glue_record(task, e.texts, e.label, i) for i, e in enumerate(examples))
            write_split(rows, folder / file)
    return folder


def settings_of(checkpoint: Path) -> dict:
    from finetune import read_record
    record = read_record(checkpoint) or {}
    settings = record.get("settings", {})
    return {"max_length": settings.get("max_length", 128), "doc_stride": settings.get("doc_stride", 128),
            "max_eval_examples": settings.get("max_eval_examples"),
            "unpruned_metrics": record.get("dev_metrics")}


def our_sample(task: str, data: Path, checkpoint: Path, num_tokens: int, seed: int) -> tuple[int, int]:
    """(samples, tokens) of kprune's pruning sample for this task, sample size and seed (as run_grid)."""
    import transformers
    from kprune.data import sample_features

    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    settings = settings_of(checkpoint)
    samples = sample_features(task, data, tokenizer, num_tokens=num_tokens, seed=seed,
                              max_length=settings["max_length"], doc_stride=settings["doc_stride"])
    return len(samples), sum(len(s["input_ids"]) for s in samples)


# ------------------------------------------------------------------------------------------------
# Their result in our model
# ------------------------------------------------------------------------------------------------

def load_checkpoint(task: str, checkpoint: Path):
    import transformers
    from kprune.tasks import get_task
    cls = (transformers.AutoModelForQuestionAnswering if get_task(task).kind == "qa"
           else transformers.AutoModelForSequenceClassification)
    return cls.from_pretrained(checkpoint).eval()


def kwon_model(model, capture: dict):
    """Kwon's masks scale attention probabilities per head and FFN activations per neuron: exactly
    kprune.apply_masks's folding of mask values into the output projections."""
    import kprune
    masks = kprune.UnitMasks([m.float() for m in capture["head_mask"]], [m.float() for m in capture["neuron_mask"]])
    return kprune.apply_masks(model, masks)


def paper_model(model, capture: dict):
    """The paper's pruned model: its kept units (physically removed by kprune.apply_masks), then its
    tensors loaded by name. A sublayer it emptied is LayerNorm(residual) in their code, without the
    output bias, so that bias is zeroed here."""
    import torch

    import kprune
    heads = [torch.nonzero(m > 1e-5).flatten().tolist() for m in capture["head_masks"]]
    neurons = [torch.nonzero(m > 1e-5).flatten().tolist() for m in capture["neuron_masks"]]
    pruned = kprune.apply_masks(model, kprune.UnitMasks.from_kept(model, heads, neurons))
    ours = pruned.state_dict()
    theirs = capture["state_dict"]
    mismatched = [k for k, v in theirs.items() if k in ours and ours[k].shape != v.shape]
    if mismatched:
        raise RuntimeError(f"their pruned tensors do not fit the kept units: {mismatched[:5]}")
    pruned.load_state_dict({k: v for k, v in theirs.items() if k in ours}, strict=False)
    views = kprune.encoder_layers(pruned)
    with torch.no_grad():
        for l, view in enumerate(views):
            if not heads[l] and view.attn_out.bias is not None:
                view.attn_out.bias.zero_()
            if not neurons[l] and view.ffn_out.bias is not None:
                view.ffn_out.bias.zero_()
    return pruned


def score_cell(task: str, method: str, checkpoint: Path, data: Path, capture: dict, settings: dict) -> dict:
    import kprune
    from kprune.evaluation import evaluate
    from kprune.tasks import get_task
    import transformers

    model = load_checkpoint(task, checkpoint)
    pruned = (paper_model if method == "kprune-paper" else kwon_model)(model, capture).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    metrics = evaluate(pruned, tokenizer, task, data, split="dev", max_length=settings["max_length"],
                       doc_stride=settings["doc_stride"], max_examples=settings["max_eval_examples"])
    spec = get_task(task)
    full = kprune.encoder_layers(model)
    kept = kprune.encoder_layers(pruned)
    return {"metric_name": spec.main_metric, "metric": float(metrics[spec.main_metric]),
            "metrics": {k: float(v) for k, v in metrics.items()},
            "heads_kept": [v.num_heads for v in kept], "neurons_kept": [v.num_neurons for v in kept],
            "heads_full": [v.num_heads for v in full], "neurons_full": [v.num_neurons for v in full],
            "hidden": full[0].attn_out.out_features, "head_size": full[0].head_size}


# ------------------------------------------------------------------------------------------------
# One cell
# ------------------------------------------------------------------------------------------------

def run_child(command: list[str], env: dict, log: Path) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS MB) of a child process, from os.wait4's rusage."""
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - started, usage.ru_maxrss / 1024


def child_env(threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CUDA_VISIBLE_DEVICES")}
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    return env


def run_cell(cell: tuple, args, sample: tuple[int, int]) -> dict:
    import torch

    task, method, reduction, seed = cell
    checkpoint = args.checkpoint_dir / task
    data = task_data(task, args.data_dir, args.cache_dir)
    settings = settings_of(checkpoint)
    local = export_rows(task, data, args.work_dir / "data",
                        settings["max_eval_examples"] if task == "squad" else None)
    code = args.paper_code if method == "kprune-paper" else args.kwon_code
    out = args.work_dir / "runs" / cell_key(*cell).replace("/", "_")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    command = [str(args.python), str(HERE / "originals" / "launch.py"), "--method", method, "--code", str(code),
               "--data", str(local.parent), "--out", str(out), "--samples", str(sample[0]), "--",
               *their_arguments(method, task, checkpoint, reduction, seed, out / "their_output")]
    logger.info("%s: %s", cell_key(*cell), " ".join(command))
    code_, wall, child_peak = run_child(command, child_env(args.threads), out / "run.log")
    if code_ != 0 or not (out / "capture.json").is_file():
        raise RuntimeError(f"{cell_key(*cell)}: their run failed (exit {code_}); see {out / 'run.log'}")
    numbers = json.loads((out / "capture.json").read_text())
    capture = torch.load(out / "capture.pt", weights_only=False)
    scored = score_cell(task, method, checkpoint, data, capture, settings)
    seq_len = sample[1] / sample[0]
    record = {
        "task": task, "method": method, "reduction_target": reduction, "seed": seed,
        **{k: scored[k] for k in ("metric_name", "metric", "metrics", "heads_kept", "neurons_kept")},
        "their_metric": numbers.get("their_metric"),
        "unpruned_metrics": settings["unpruned_metrics"],
        "flops_reduction": achieved_reduction(scored["heads_kept"], scored["neurons_kept"], scored["heads_full"],
                                              scored["neurons_full"], seq_len, scored["hidden"], scored["head_size"]),
        "flops_avg_seq_len": seq_len,
        "prune_seconds": numbers["prune_seconds"], "peak_rss_mb": numbers["peak_rss_mb"],
        "peak_is_window": numbers.get("peak_is_window"),
        "process_seconds": wall, "process_peak_rss_mb": child_peak,
        "num_samples": numbers["num_samples"], "num_distinct_samples": numbers.get("num_distinct_samples"),
        "num_tokens": numbers["num_tokens"],
        "kprune_sample": {"num_samples": sample[0], "num_tokens": sample[1]},
        "their_argv": numbers["argv"], "run_dir": str(out), "threads": args.threads,
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return record


TASKS = ("sst2", "stsb", "mrpc", "qqp", "squad")   # the tasks both originals support that the grid has


def table(results: dict) -> str:
    lines = [f"{'cell':32s} {'metric':>8s} {'FLOPs -':>8s} {'prune s':>8s} {'peak MB':>8s} {'samples':>8s} {'tokens':>8s}"]
    for key in sorted(results.get("cells", {})):
        c = results["cells"][key]
        lines.append(f"{key:32s} {c['metric']:8.4f} {100 * c['flops_reduction']:7.1f}% {c['prune_seconds']:8.1f} "
                     f"{c['peak_rss_mb'] or float('nan'):8.0f} {c['num_samples']:8d} {c['num_tokens']:8d}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paper-code", type=Path, help="checkout of snudm-starlab/K-prune")
    parser.add_argument("--kwon-code", type=Path, help="checkout of WoosukKwon/retraining-free-pruning")
    parser.add_argument("--python", type=Path, default=Path(os.environ.get("KPRUNE_ORIGINALS_PYTHON", sys.executable)),
                        help="interpreter of their virtual environment (default: $KPRUNE_ORIGINALS_PYTHON)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--reductions", nargs="+", type=float, default=[0.5, 0.8])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--num-tokens", type=int, default=20_000, help="kprune's sample size (the grid's)")
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("~/.cache/kprune-bench/finetuned"))
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/kprune-bench"),
                        help="run_grid.py's cache (QQP's prepared train/dev split lives there)")
    parser.add_argument("--work-dir", type=Path, default=Path("~/.cache/kprune-bench/originals"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--list", action="store_true", help="print the planned cells and whether each is done")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("checkpoint_dir", "data_dir", "cache_dir", "work_dir"):
        setattr(args, name, getattr(args, name).expanduser().resolve())

    cells = planned(args.tasks, args.methods, args.reductions, args.seeds)
    results = load_results(args.output)
    todo = pending(cells, results, args.num_tokens)
    if args.list:
        for cell in cells:
            print(cell_key(*cell), "missing" if cell in todo else "done")
        return 0
    missing_code = [m for m, d in (("kprune-paper", args.paper_code), ("kwon-paper", args.kwon_code))
                    if m in args.methods and (d is None or not d.is_dir())]
    if missing_code:
        parser.error(f"no checkout for {', '.join(missing_code)}: pass --paper-code / --kwon-code "
                     f"(git clone https://github.com/snudm-starlab/K-prune, "
                     f"git clone https://github.com/WoosukKwon/retraining-free-pruning)")
    failures = 0
    samples: dict = {}
    for cell in todo:
        task, _, _, seed = cell
        if not (args.checkpoint_dir / task / "config.json").is_file():
            logger.warning("%s: no checkpoint in %s; skipped", cell_key(*cell), args.checkpoint_dir / task)
            continue
        try:
            if (task, seed) not in samples:
                samples[task, seed] = our_sample(task, task_data(task, args.data_dir, args.cache_dir),
                                                 args.checkpoint_dir / task, args.num_tokens, seed)
            record = run_cell(cell, args, samples[task, seed])
        except Exception as error:  # one failed cell must not lose the others
            logger.error("%s", error)
            failures += 1
            continue
        record["num_tokens_requested"] = args.num_tokens
        with locked(args.output):   # another runner may share the results file
            results = load_results(args.output)
            results["cells"][cell_key(*cell)] = record
            results["meta"] = {"command": "python benchmarks/run_originals.py " + " ".join(argv or sys.argv[1:]),
                               "checkpoint_dir": str(args.checkpoint_dir), "num_tokens": args.num_tokens,
                               "updated_at": record["finished_at"]}
            write_results(args.output, results)
        logger.info("%s: %s %.4f, FLOPs -%.1f%%, prune %.0f s, peak %.0f MB", cell_key(*cell), record["metric_name"],
                    record["metric"], 100 * record["flops_reduction"], record["prune_seconds"], record["peak_rss_mb"] or 0)
    print(table(load_results(args.output)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
