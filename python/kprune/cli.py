"""Command line: ``kprune prune | evaluate | info | export``."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from kprune.config import GRADIENT_GROUPS, MEASURE_DTYPES
from kprune.errors import DataError, KPruneError
from kprune.export import DEFAULT_OPSET, FORMATS, MAX_OPSET, MIN_OPSET

logger = logging.getLogger("kprune")


def _load(model_dir: str):
    import transformers

    from kprune.io import load_pruned

    if not Path(model_dir).is_dir():
        raise DataError(f"--model {model_dir!r} is not a directory; expected a Hugging Face model folder")
    model = load_pruned(model_dir)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise DataError(f"--model {model_dir!r} has no usable tokenizer: {error}") from error
    return model, tokenizer


def check_model_fits_task(model, spec) -> None:
    """The task's labels must fit the model's head."""
    from kprune.adapters import head_kind_of

    head = head_kind_of(model)
    if (spec.kind == "qa") != (head == "qa"):
        raise DataError(f"task {spec.name!r} ({spec.kind}) does not fit the model's head {type(model).__name__}")
    labels = int(getattr(model.config, "num_labels", 0))
    if spec.kind != "qa" and labels != spec.num_labels:
        raise DataError(f"task {spec.name!r} has {spec.num_labels} label(s) but the model's head has {labels}; "
                        "prune a model fine-tuned for this task")


def _cmd_prune(args) -> int:
    from kprune.config import KPruneConfig, check_reduction
    from kprune.data import sample_features
    from kprune.distributed import Collective
    from kprune.io import check_output_dir, save_pruned
    from kprune.launch import cli_worker, init_from_env, launch_workers
    from kprune.pruner import prune
    from kprune.tasks import get_task

    check_reduction(args.flops_reduction)
    check_output_dir(args.output, args.overwrite)
    if args.num_tokens <= 0:
        raise DataError(f"--num-tokens {args.num_tokens} must be a positive number of tokens")
    embedding = args.task == "embedding"    # a sentence-embedding encoder, pruned on unlabelled sentences
    spec = None if embedding else get_task(args.task)
    if args.workers != 1:   # the same command in N local processes, each running the lines below
        return launch_workers(args.workers, cli_worker, _cmd_prune, argparse.Namespace(**{**vars(args), "workers": 1}))
    group = init_from_env()   # torchrun (or --workers): every rank loads the same model and sample
    ranks = Collective(group)
    with ranks.guard("loading the model and the sample"):
        model, tokenizer = _load(args.model)
        if embedding:
            from kprune.data.sentences import sample_sentences
            from kprune.sentence_files import source_files

            extra = source_files(args.model)
            model = model.base_model   # the encoder (sentence-transformers folders may name e.g. *ForMaskedLM)
        else:
            check_model_fits_task(model, spec)
            extra = {}
        started = time.perf_counter()
        if embedding:
            samples = sample_sentences(args.data, tokenizer, num_tokens=args.num_tokens, seed=args.seed,
                                       max_length=args.max_length or 128)
        else:
            samples = sample_features(spec.name, args.data, tokenizer, num_tokens=args.num_tokens, seed=args.seed,
                                      max_length=args.max_length, doc_stride=args.doc_stride)
        sampling = time.perf_counter() - started
    config = KPruneConfig(batch_size=args.batch_size, gradient_groups=args.gradient_groups, seed=args.seed,
                          measure_dtype=args.measure_dtype,
                          weight_tuning=not args.no_weight_tuning, progress=not args.quiet and ranks.rank == 0)
    result = prune(model, samples, "embedding" if embedding else spec.kind, args.flops_reduction, config,
                   process_group=group)
    report = dict(result.report, task_name=args.task if embedding else spec.name, data=str(args.data),
                  model=str(args.model), seed=args.seed)
    report["seconds"]["sampling"] = round(sampling, 3)
    with ranks.guard("writing the output"):   # rank 0 alone writes (atomically)
        if ranks.rank == 0:
            save_pruned(result.model, args.output, tokenizer, extra_files=dict(extra, **{"report.json": report}),
                        overwrite=args.overwrite)
    if ranks.rank != 0:
        return 0
    summary = {key: report[key] for key in ("flops_reduction", "params_before", "params_after", "heads_kept",
                                            "neurons_kept")}
    summary["seconds"] = report["seconds"]["total"]
    summary["output"] = str(args.output)
    print(json.dumps(summary))
    return 0


def _cmd_evaluate(args) -> int:
    from kprune.evaluation import evaluate
    from kprune.tasks import get_task

    spec = get_task(args.task)
    model, tokenizer = _load(args.model)
    if args.embedding:
        from kprune.embedding import evaluate_sts

        if spec.name != "stsb":
            raise DataError(f"--embedding scores sentence embeddings on stsb, not on {spec.name!r}")
        print(json.dumps(evaluate_sts(model, tokenizer, args.data, split=args.split, batch_size=args.batch_size,
                                      max_length=args.max_length or 128, max_examples=args.max_examples)))
        return 0
    check_model_fits_task(model, spec)
    metrics = evaluate(model, tokenizer, spec.name, args.data, split=args.split, batch_size=args.batch_size,
                       max_length=args.max_length, doc_stride=args.doc_stride, max_examples=args.max_examples)
    print(json.dumps(metrics))
    return 0


def _cmd_info(args) -> int:
    from kprune.adapters import EncoderAdapter
    from kprune.flops import model_flops
    from kprune.pruner import count_parameters

    model, _ = _load(args.model)
    adapter = EncoderAdapter(model)
    heads, neurons = adapter.units_kept()
    layers = adapter.num_layers
    full = model_flops([adapter.original_heads] * layers, [adapter.original_neurons] * layers, args.seq_len,
                       adapter.hidden_size, adapter.head_size)
    now = model_flops(heads, neurons, args.seq_len, adapter.hidden_size, adapter.head_size)
    print(json.dumps({
        "architecture": adapter.arch.family, "class": type(model).__name__, "layers": layers,
        "hidden_size": adapter.hidden_size, "heads_kept": heads, "heads_per_layer": adapter.original_heads,
        "neurons_kept": neurons, "neurons_per_layer": adapter.original_neurons, "seq_len": args.seq_len,
        "encoder_flops": now, "encoder_flops_unpruned": full, "flops_reduction": 1 - now / full,
        "params": count_parameters(model),
    }))
    return 0


def _cmd_export(args) -> int:
    from kprune.export import export_model

    path = export_model(args.model, args.output, args.format, args.opset, args.overwrite)
    print(json.dumps({"output": str(path), "format": args.format, "bytes": path.stat().st_size}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kprune", description="Retraining-free pruning of Transformer encoders")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="prune a fine-tuned model to a FLOPs budget")
    p.add_argument("--model", required=True, help="fine-tuned Hugging Face model folder")
    p.add_argument("--task", required=True, help="sst2, mrpc, stsb, qqp, mnli, qnli, rte, cola, squad, squad_v2, or "
                   "embedding (a sentence-embedding encoder; --data gives unlabelled sentences, labels ignored)")
    p.add_argument("--data", required=True, help="GLUE task folder, SQuAD folder/JSON, CSV/JSONL file, or datasets name")
    p.add_argument("--flops-reduction", type=float, default=0.5, help="fraction of encoder FLOPs to remove (0..1)")
    p.add_argument("--output", required=True, help="new folder for the pruned model and report.json")
    p.add_argument("--num-tokens", type=int, default=100_000, help="token budget of the sample (default 100000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per sample (default: the task's, 128; SQuAD 384-token windows)")
    p.add_argument("--doc-stride", type=int, default=None, help="SQuAD: tokens between window starts (default 128)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--gradient-groups", choices=GRADIENT_GROUPS, default="batch",
                   help="batch: the paper's batch gradients; sample: per-sample Fisher")
    p.add_argument("--measure-dtype", choices=MEASURE_DTYPES, default="float32",
                   help="precision of the knowledge measurement; bfloat16 is faster on CPUs and GPUs with bf16 "
                        "matrix units, and approximate")
    p.add_argument("--no-weight-tuning", action="store_true", help="skip the least-squares weight tuning")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--workers", type=int, default=1,
                   help="data-parallel processes on this machine, threads shared equally (or use torchrun)")
    p.set_defaults(func=_cmd_prune)

    e = sub.add_parser("evaluate", help="print a JSON object of the task's metrics")
    e.add_argument("--model", required=True)
    e.add_argument("--task", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="dev")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--max-length", type=int, default=None,
                   help="tokens per example (default: the task's, 128; SQuAD 384-token windows)")
    e.add_argument("--doc-stride", type=int, default=None, help="SQuAD: tokens between window starts (default 128)")
    e.add_argument("--max-examples", type=int, default=None)
    e.add_argument("--embedding", action="store_true", help="score any encoder's mean-pooled sentence embeddings "
                   "by the Spearman correlation of cosine similarities (--task stsb), no fine-tuning")
    e.set_defaults(func=_cmd_evaluate)

    i = sub.add_parser("info", help="architecture, units kept, FLOPs and parameters")
    i.add_argument("--model", required=True)
    i.add_argument("--seq-len", type=float, default=128.0, help="sequence length the FLOPs are counted at")
    i.set_defaults(func=_cmd_info)

    x = sub.add_parser("export", help="export a (pruned) model to ONNX with dynamic batch and sequence axes")
    x.add_argument("--model", required=True, help="model folder written by kprune prune, or a Hugging Face folder")
    x.add_argument("--format", choices=FORMATS, default="onnx", help="output format (default onnx)")
    x.add_argument("--output", required=True, help="file to write, e.g. model.onnx")
    x.add_argument("--opset", type=int, default=None, help=f"ONNX operator set, {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})")
    x.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    x.set_defaults(func=_cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KPruneError as error:
        print(f"kprune: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
