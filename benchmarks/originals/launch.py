"""Run one original implementation unmodified, with shim.py's replacements, and keep what it found.

    <their venv>/bin/python benchmarks/originals/launch.py --method kprune-paper|kwon-paper \
        --code CHECKOUT --data LOCAL_DATA --out DIR --samples N -- <their command-line arguments>

Their entry point (K-prune: src/main.py; Kwon: main.py) runs as ``__main__`` from their checkout, after
``shim.install_all``. Wrappers around their own functions (not changes to them) record the pruning
window (seconds and peak RSS, measured as run_grid.py measures kprune), the sample they drew, and the
result: K-prune's pruned model and masks; Kwon's search, rearranged and tuned masks and the mask
gradients. ``--samples N`` becomes their sample-size argument: Kwon's ``--num_samples N``; K-prune's
``--num_tokens``, which it divides by the task's dev-set average length (their table), set so that
the quotient is N. Writes DIR/capture.pt (tensors) and DIR/capture.json (numbers).
"""
from __future__ import annotations

import argparse
import json
import runpy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shim  # noqa: E402

ENTRY = {"kprune-paper": "src/main.py", "kwon-paper": "main.py"}


class Recorder:
    """What the wrappers saw."""

    def __init__(self):
        self.numbers: dict = {}
        self.tensors: dict = {}
        self.started: float | None = None

    def start(self) -> None:
        if self.started is None:
            self.numbers["peak_is_window"] = shim.reset_peak_rss()
            self.started = time.perf_counter()

    def stop(self) -> None:
        self.numbers["prune_seconds"] = time.perf_counter() - self.started
        self.numbers["peak_rss_mb"] = shim.peak_rss_mb()


def record_subset(recorder: Recorder) -> None:
    """Their sample is a ``torch.utils.data.Subset`` of the tokenized training set: keep its rows."""
    import torch.utils.data as tud

    base = tud.Subset

    class RecordingSubset(base):
        def __init__(self, dataset, indices):
            super().__init__(dataset, indices)
            if "sample" not in recorder.tensors:
                rows = [dataset[int(i)] for i in indices]
                keep = ("input_ids", "token_type_ids", "attention_mask", "labels", "start_positions", "end_positions")
                recorder.tensors["sample"] = [{k: v for k, v in r.items() if k in keep} for r in rows]
                recorder.tensors["sample_indices"] = [int(i) for i in indices]
                recorder.numbers["num_samples"] = len(rows)
                recorder.numbers["num_tokens"] = sum(len(r["input_ids"]) for r in rows)
                recorder.numbers["num_distinct_samples"] = len(set(recorder.tensors["sample_indices"]))

    tud.Subset = RecordingSubset


def wrap(module, name: str, before=None, after=None) -> None:
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        if before:
            before(args, kwargs)
        result = original(*args, **kwargs)
        if after:
            after(args, kwargs, result)
        return result

    setattr(module, name, wrapper)


def hook_kprune_paper(rec: Recorder) -> None:
    import prune  # their src/prune.py

    def done(args, kwargs, result):
        rec.stop()
        model, head_masks, neuron_masks = result
        rec.tensors["head_masks"] = head_masks.detach().cpu().clone()
        rec.tensors["neuron_masks"] = neuron_masks.detach().cpu().clone()
        rec.tensors["state_dict"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    wrap(prune, "kprune", before=lambda a, k: rec.start(), after=done)


def hook_kwon_paper(rec: Recorder) -> None:
    import prune.fisher
    import prune.rearrange
    import prune.rescale
    import prune.search

    def grads(args, kwargs, result):
        rec.tensors["head_grads"], rec.tensors["neuron_grads"] = (t.detach().cpu().clone() for t in result)

    def searched(args, kwargs, result):
        rec.tensors.setdefault("search", []).append(tuple(t.detach().cpu().clone() for t in result))

    def rearranged(args, kwargs, result):
        rec.tensors.setdefault("rearranged", []).append(result.detach().cpu().clone())

    def rescaled(args, kwargs, result):
        rec.stop()
        rec.tensors["head_mask"], rec.tensors["neuron_mask"] = (t.detach().cpu().clone() for t in result)

    wrap(prune.fisher, "collect_mask_grads", before=lambda a, k: rec.start(), after=grads)
    wrap(prune.search, "search_mac", after=searched)
    wrap(prune.rearrange, "rearrange_mask", after=rearranged)
    wrap(prune.rescale, "rescale_mask", after=rescaled)


def hook_evaluation(rec: Recorder) -> None:
    import evaluate.nlp  # their evaluate/nlp.py (the name is theirs)

    def scored(args, kwargs, result):
        rec.numbers["their_metric"] = float(result)

    wrap(evaluate.nlp, "test_accuracy", after=scored)


def sample_size_args(method: str, samples: int, their_args: list[str]) -> list[str]:
    if method == "kwon-paper":
        return their_args + ["--num_samples", str(samples)]
    from dataset.glue import avg_seq_length  # their table of dev-set average lengths
    task = their_args[their_args.index("--task_name") + 1]
    seq_len = 170 if "squad" in task else avg_seq_length(task)   # main.py's choice for SQuAD
    return their_args + ["--num_tokens", str(round((samples + 0.5) * seq_len))]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", required=True, choices=sorted(ENTRY))
    parser.add_argument("--code", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--samples", type=int, required=True)
    args = parser.parse_args(argv[:split])
    their_args = argv[split + 1:]

    import torch

    entry = (args.code / ENTRY[args.method]).resolve()
    sys.path.insert(0, str(entry.parent))
    shim.install_all(args.data)
    rec = Recorder()
    record_subset(rec)
    (hook_kprune_paper if args.method == "kprune-paper" else hook_kwon_paper)(rec)
    hook_evaluation(rec)
    args.out.mkdir(parents=True, exist_ok=True)
    sys.argv = [str(entry)] + sample_size_args(args.method, args.samples, their_args)
    rec.numbers["argv"] = sys.argv[1:]
    runpy.run_path(str(entry), run_name="__main__")
    torch.save(rec.tensors, args.out / "capture.pt")
    (args.out / "capture.json").write_text(json.dumps(rec.numbers, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
