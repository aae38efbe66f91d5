"""How predictive and representational knowledge weigh against each other, sublayer by sublayer.

    python benchmarks/knowledge_balance.py --model mpnet|minilm|DIR [--task embedding|regression|classification]
        [--steps 2] [--num-tokens 3000] [--embedding-scale S] [--data /work/shared/data/glue/STS-B]

Runs the first ``--steps`` K-prune steps at 50%, then measures the knowledge of every later unit once and
prints, per sublayer, the medians of K_pred and of λ_rep·K_rep and the median of their ratio. A ratio far
below 1 everywhere means the predictive term takes no part in the choice (README, "Sentence-embedding models").
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import transformers

import kprune
from kprune.data.sentences import sample_sentences
from kprune.knowledge import unit_knowledge
from kprune.pruner import KPruner
from kprune.tuning import out_projection

HERE = Path(__file__).resolve().parent


def load(name: str, task: str):
    if name in ("minilm", "mpnet"):
        sys.path.insert(0, str(HERE))
        from embedding_prune import model_dir
        folder = model_dir(name, Path(os.path.expanduser("~/.cache/kprune/mpnet")))
    else:
        folder = Path(name)
    auto = transformers.AutoModel if task == "embedding" else transformers.AutoModelForSequenceClassification
    return transformers.AutoTokenizer.from_pretrained(folder), auto.from_pretrained(folder).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--task", default="embedding", choices=("embedding", "regression", "classification"))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--num-tokens", type=int, default=3000)
    parser.add_argument("--embedding-scale", type=float, default=None)
    parser.add_argument("--data", default="/work/shared/data/glue/STS-B")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    tokenizer, model = load(args.model, args.task)
    samples = sample_sentences(args.data, tokenizer, num_tokens=args.num_tokens, seed=0)
    extra = {} if args.embedding_scale is None else {"embedding_scale": args.embedding_scale}
    config = kprune.KPruneConfig(progress=False, **extra)
    pruner = KPruner(model, samples, args.task, 0.5, config)
    steps = pruner.steps()
    for _ in range(args.steps):
        next(steps)
    stats = pruner._measure(args.steps)
    rows = []
    for j in range(args.steps, 2 * pruner.student.num_layers):
        _, width, _, _ = pruner._widths(j)
        k_pred, k_rep = unit_knowledge(stats[j], out_projection(pruner.student, j).weight, width,
                                       pruner.num_samples, pruner.num_tokens)
        rep = pruner.config.lambda_rep * k_rep
        rows.append({"sublayer": j, "kind": "heads" if j % 2 == 0 else "neurons",
                     "k_pred_median": float(k_pred.median()), "lambda_rep_k_rep_median": float(rep.median()),
                     "ratio_median": float((pruner.config.lambda_pred * k_pred / rep).median())})
        print(f"{j:3d} {rows[-1]['kind']:8} K_pred {rows[-1]['k_pred_median']:.3e}  λ_rep·K_rep "
              f"{rows[-1]['lambda_rep_k_rep_median']:.3e}  ratio {rows[-1]['ratio_median']:.3e}")
    print(json.dumps({"model": args.model, "task": args.task, "num_tokens": pruner.num_tokens,
                      "embedding_scale": pruner.config.embedding_scale, "rows": rows}))


if __name__ == "__main__":
    main()
