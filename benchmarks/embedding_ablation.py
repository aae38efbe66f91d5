"""Which settings let a base-size sentence-embedding model survive pruning: one run per call, on a small sample.

    python benchmarks/embedding_ablation.py --model mpnet --tag NAME --config '{"embedding_scale": 1}'
        [--num-tokens 5000] [--flops-reduction 0.5] [--data /work/shared/data/glue/STS-B]

Prunes with KPruneConfig(**config) (every setting not given at this version's default), scores STS-B dev by
cosine Spearman and appends one record (the config as resolved for the task, the Spearman, heads and neurons
kept, seconds) to benchmarks/results/embedding_ablation.json. Give the run's settings explicitly so that a record
means the same computation whatever the defaults become.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch
import transformers

import kprune
from kprune.data.sentences import sample_sentences
from kprune.embedding import evaluate_sts

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "embedding_ablation.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("minilm", "mpnet"), default="mpnet")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--config", default="{}", help="KPruneConfig settings as a JSON object")
    parser.add_argument("--num-tokens", type=int, default=5000)
    parser.add_argument("--flops-reduction", type=float, default=0.5)
    parser.add_argument("--data", default="/work/shared/data/glue/STS-B")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample draw and of KPruneConfig.seed")
    parser.add_argument("--machine", default="")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    sys.path.insert(0, str(HERE))
    from embedding_prune import model_dir
    folder = model_dir(args.model, Path(os.path.expanduser("~/.cache/kprune/mpnet")))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    samples = sample_sentences(args.data, tokenizer, num_tokens=args.num_tokens, seed=args.seed)
    config = kprune.KPruneConfig(progress=False, seed=args.seed, **json.loads(args.config))
    started = time.perf_counter()
    result = kprune.prune(model, samples, "embedding", args.flops_reduction, config)
    seconds = time.perf_counter() - started
    after = evaluate_sts(result.model, tokenizer, args.data)
    report = result.report
    record = {"tag": args.tag, "model": args.model, "seed": args.seed, "num_tokens": report["num_tokens"],
              "flops_reduction": report["flops_reduction"], "config": report["config"],
              "spearman_after": after["spearman"], "heads_kept": report["heads_kept"],
              "neurons_kept": report["neurons_kept"], "prune_seconds": round(seconds, 1),
              "threads": torch.get_num_threads(), "machine": args.machine,
              "command": shlex.join(["python", "benchmarks/embedding_ablation.py"] + sys.argv[1:])}
    records = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    records.append(record)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1) + "\n")
    os.replace(tmp, RESULTS)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
