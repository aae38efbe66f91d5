"""Command line: ``kprune prune | evaluate | info | export``."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from kprune import console
from kprune.config import GRADIENT_GROUPS, MEASURE_DTYPES, RECIPES
from kprune.errors import ConfigError, DataError, KPruneError

logger = logging.getLogger("kprune")


def _load(model_dir: str):
    if not Path(model_dir).is_dir():
        raise DataError(f"--model {model_dir!r} is not a directory; expected a Hugging Face model folder")
    if not (Path(model_dir) / "config.json").is_file():
        raise DataError(f"--model {model_dir!r} is not a model folder: it has no config.json")
    console.status(f"loading the model from {model_dir}")
    import transformers

    from kprune.io import load_pruned

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
        hint = "give --num-labels the head's size" if spec.name == "classification" else \
            "prune a model fine-tuned for this task, or use --task classification --num-labels N for your own head"
        raise DataError(f"task {spec.name!r} has {spec.num_labels} label(s) but the model's head has {labels}; "
                        f"{hint}")


def task_spec(args, model):
    """The task of --task: a GLUE/SQuAD task, or a generic classification (--num-labels, default the
    head's size; class names from the model's id2label) or regression task; with the column flags."""
    from kprune.tasks import custom_task, get_task, with_columns

    if args.task in ("classification", "regression"):
        labels = args.num_labels if args.num_labels is not None else int(getattr(model.config, "num_labels", 2))
        names = [str(v) for _, v in sorted((int(k), v) for k, v in (model.config.id2label or {}).items())]
        named = len(names) == labels and not all(n.upper() == f"LABEL_{i}" for i, n in enumerate(names))
        spec = custom_task(args.task, labels, names if named and args.task == "classification" else None)
    else:
        if args.num_labels is not None:
            raise ConfigError(f"--num-labels applies to --task classification, not to --task {args.task}")
        spec = get_task(args.task)
    return with_columns(spec, args.text_column, args.text_pair_column, args.label_column)


def _cmd_prune(args) -> int:
    from kprune.config import KPruneConfig, check_reduction
    from kprune.data import sample_features
    from kprune.distributed import Collective
    from kprune.io import check_output_dir, save_pruned
    from kprune.launch import cli_worker, init_from_env, launch_workers
    from kprune.pruner import prune

    check_reduction(args.flops_reduction)
    check_output_dir(args.output, args.overwrite)
    if args.num_tokens <= 0:
        raise DataError(f"--num-tokens {args.num_tokens} must be a positive number of tokens")
    embedding = args.task == "embedding"    # a sentence-embedding encoder, pruned on unlabelled sentences
    if args.workers != 1:   # the same command in N local processes, each running the lines below
        return launch_workers(args.workers, cli_worker, _cmd_prune, argparse.Namespace(**{**vars(args), "workers": 1}))
    group = init_from_env()   # torchrun (or --workers): every rank loads the same model and sample
    ranks = Collective(group)
    with ranks.guard("loading the model and the sample"):
        model, tokenizer = _load(args.model)
        if embedding:
            from kprune.data.sentences import sample_sentences
            from kprune.sentence_files import source_files

            spec, extra = None, source_files(args.model)
            model = model.base_model   # the encoder (sentence-transformers folders may name e.g. *ForMaskedLM)
        else:
            spec, extra = task_spec(args, model), {}
            check_model_fits_task(model, spec)
        started = time.perf_counter()
        if embedding:
            samples = sample_sentences(args.data, tokenizer, num_tokens=args.num_tokens, seed=args.seed,
                                       max_length=args.max_length or 128)
        else:
            samples = sample_features(spec, args.data, tokenizer, num_tokens=args.num_tokens, seed=args.seed,
                                      max_length=args.max_length, doc_stride=args.doc_stride,
                                      progress=not args.quiet and ranks.rank == 0)
        sampling = time.perf_counter() - started
    chosen = {name: value for name, value in (("gradient_groups", args.gradient_groups),
                                              ("measure_dtype", args.measure_dtype)) if value is not None}
    if args.no_weight_tuning:
        chosen["weight_tuning"] = False
    # --recipe paper pins the paper's settings whatever the defaults; flags given explicitly still apply
    config = KPruneConfig.recipe(args.recipe, batch_size=args.batch_size, seed=args.seed,
                                 progress=not args.quiet and ranks.rank == 0, **chosen)
    result = prune(model, samples, "embedding" if embedding else spec.kind, args.flops_reduction, config,
                   process_group=group)
    report = dict(result.report, task_name=args.task if embedding else spec.name, data=str(args.data),
                  model=str(args.model), seed=args.seed)
    report["seconds"]["sampling"] = round(sampling, 3)
    with ranks.guard("writing the output"):   # rank 0 alone writes (atomically)
        if ranks.rank == 0:
            console.status(f"writing {args.output}")
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

    model, tokenizer = _load(args.model)
    spec = task_spec(args, model)
    if args.embedding:
        from kprune.embedding import evaluate_sts

        if spec.name != "stsb":
            raise DataError(f"--embedding scores sentence embeddings on stsb, not on {spec.name!r}")
        print(json.dumps(evaluate_sts(model, tokenizer, args.data, split=args.split, batch_size=args.batch_size,
                                      max_length=args.max_length or 128, max_examples=args.max_examples)))
        return 0
    check_model_fits_task(model, spec)
    metrics = evaluate(model, tokenizer, spec, args.data, split=args.split, batch_size=args.batch_size,
                       max_length=args.max_length, doc_stride=args.doc_stride, max_examples=args.max_examples)
    print(json.dumps(metrics))
    return 0


def _cmd_info(args) -> int:
    from kprune.adapters import EncoderAdapter
    from kprune.flops import model_flops
    from kprune.pruner import count_parameters

    if args.seq_len <= 0:
        raise ConfigError(f"--seq-len {args.seq_len} must be a positive number of tokens")
    model, _ = _load(args.model)
    adapter = EncoderAdapter(model)
    heads, neurons = adapter.units_kept()
    layers = adapter.num_layers

    def reduction_at(seq_len: float) -> tuple[float, float, float]:
        full = model_flops([adapter.original_heads] * layers, [adapter.original_neurons] * layers, seq_len,
                           adapter.hidden_size, adapter.head_size, adapter.relative, adapter.arch.gated_ffn)
        now = model_flops(heads, neurons, seq_len, adapter.hidden_size, adapter.head_size, adapter.relative,
                          adapter.arch.gated_ffn)
        return now, full, 1 - now / full

    now, full, reduction = reduction_at(args.seq_len)
    info = {
        "model": str(args.model), "architecture": adapter.arch.family, "class": type(model).__name__,
        "layers": layers, "hidden_size": adapter.hidden_size, "heads_kept": heads,
        "heads_per_layer": adapter.original_heads, "neurons_kept": neurons,
        "neurons_per_layer": adapter.original_neurons, "seq_len": args.seq_len, "encoder_flops": now,
        "encoder_flops_unpruned": full, "flops_reduction": reduction, "params": count_parameters(model),
    }
    pruned_at = _pruned_seq_len(Path(args.model))
    if pruned_at is not None:
        info["pruned_seq_len"] = pruned_at
        info["flops_reduction_pruned"] = reduction_at(pruned_at)[2]
    print(json.dumps(info) if args.json else console.info_table(info))
    return 0


def _cmd_export(args) -> int:
    from kprune.export import export_model

    path = export_model(args.model, args.output, args.format, args.opset, args.overwrite, args.optimize)
    print(json.dumps({"output": str(path), "format": args.format, "bytes": path.stat().st_size}))
    return 0


def _pruned_seq_len(model_dir: Path) -> float | None:
    """The mean sequence length of the sample the model was pruned with (report.json), if known."""
    try:
        value = json.loads((model_dir / "report.json").read_text()).get("avg_seq_len")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


TASK_HELP = ("sst2, mrpc, stsb, qqp, mnli, qnli, rte, cola, squad, squad_v2; classification / regression "
             "for your own data and head; or (prune) embedding for a sentence-embedding encoder, whose --data "
             "gives unlabelled sentences (labels ignored)")
DATA_HELP = ("GLUE task folder, SQuAD folder or JSON, a CSV/JSONL/TSV file, or a datasets hub name (online). "
             "CSV/JSONL columns: text (or sentence, sentence1, text_a, question, premise), a second text "
             "text_pair (or sentence2, text_b, hypothesis), label; or the GLUE column names of a GLUE task")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """Options shared by prune and evaluate: the task and how its data is read."""
    p.add_argument("--model", required=True, help="fine-tuned Hugging Face model folder (config.json, weights, "
                                                  "tokenizer)")
    p.add_argument("--task", required=True, help=TASK_HELP)
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--num-labels", type=int, default=None,
                   help="classes of --task classification (default: the model head's size)")
    p.add_argument("--text-column", default=None, help="column of the (first) text (default: the task's names)")
    p.add_argument("--text-pair-column", default=None,
                   help="column of the second text of a pair (default: the task's names; generic tasks read "
                        "one when present)")
    p.add_argument("--label-column", default=None, help="column of the label (default: the task's names)")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per sequence, longer ones truncated (default: the task's, 128; SQuAD 384-token windows)")
    p.add_argument("--doc-stride", type=int, default=None, help="SQuAD: context tokens between window starts (default 128)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: the cores other processes leave free; also KPRUNE_THREADS)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars, status lines or warnings (transformers' included); errors only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kprune", description="Retraining-free pruning of Transformer encoders",
                                     formatter_class=console.HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, formatter_class=console.HelpFormatter)

    p = command("prune", "prune a fine-tuned model to a FLOPs budget")
    _add_data_options(p)
    p.add_argument("--flops-reduction", type=float, default=0.5,
                   help="fraction of the encoder's FLOPs to remove, between 0 and 1")
    p.add_argument("--output", required=True, help="new folder for the pruned model and report.json")
    p.add_argument("--num-tokens", type=int, default=100_000, help="tokens in the pruning sample")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and of the gradient batches")
    p.add_argument("--batch-size", type=int, default=32, help="samples per batch of the gradients")
    p.add_argument("--recipe", choices=RECIPES, default="default",
                   help="default: the paper's recipe plus KPWT's damping by held-out error towards the kept weights and the "
                        "task head's re-fit to the teacher (damping_search, ridge_prior=original, head_refit), measured "
                        "in bfloat16 where the CPU or GPU computes it natively (measure_dtype=auto); "
                        "paper: the paper's recipe exactly (Park et al. 2024, float32), whatever this version's defaults")
    p.add_argument("--gradient-groups", choices=GRADIENT_GROUPS, default=None,
                   help="batch: the paper's batch gradients; sample: per-sample Fisher (default: the recipe's)")
    p.add_argument("--measure-dtype", choices=MEASURE_DTYPES, default=None,
                   help="precision of the knowledge measurement; bfloat16 is faster on CPUs and GPUs with bf16 "
                        "matrix units, and approximate; auto: bfloat16 where the device has them (AVX512-BF16, "
                        "AMX, CUDA bf16), else float32 (default: the recipe's: auto, the paper's float32)")
    p.add_argument("--no-weight-tuning", action="store_true", help="skip the least-squares weight tuning")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--workers", type=int, default=1,
                   help="data-parallel processes on this machine, threads shared equally (or use torchrun)")
    p.set_defaults(func=_cmd_prune)

    e = command("evaluate", "print a JSON object of the task's metrics")
    _add_data_options(e)
    e.add_argument("--split", default="dev", help="split to score: the file {split}.tsv/.csv/... in a folder")
    e.add_argument("--batch-size", type=int, default=64, help="sequences per forward pass")
    e.add_argument("--max-examples", type=int, default=None, help="score only the first N examples "
                                                                 "(default: all)")
    e.add_argument("--embedding", action="store_true", help="score any encoder's mean-pooled sentence embeddings "
                   "by the Spearman correlation of cosine similarities (--task stsb), no fine-tuning")
    e.set_defaults(func=_cmd_evaluate)

    i = command("info", "architecture, units kept, FLOPs and parameters of a model folder")
    i.add_argument("--model", required=True, help="model folder (pruned or not)")
    i.add_argument("--seq-len", type=float, default=128.0, help="sequence length the FLOPs are counted at")
    i.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    i.set_defaults(func=_cmd_info, quiet=False, threads=None)

    x = command("export", "export a (pruned) model to ONNX with dynamic batch and sequence axes")
    x.add_argument("--model", required=True, help="model folder written by kprune prune, or a Hugging Face folder")
    x.add_argument("--format", choices=("onnx",), default="onnx", help="output format")
    x.add_argument("--output", required=True, help="file to write, e.g. model.onnx")
    x.add_argument("--opset", type=int, default=None, help="ONNX operator set, 18 to 23 (default 20)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    x.add_argument("--optimize", action=argparse.BooleanOptionalAction, default=True,
                   help="rewrite the graph (same outputs) so that onnxruntime runs it faster on CPU; "
                        "--no-optimize keeps the exporter's graph (default: optimize)")
    x.set_defaults(func=_cmd_export, quiet=False, threads=None)
    return parser


def _start_threads(args) -> None:
    """Threads and OpenMP wait policy from the free cores, before torch loads (see kprune.threads)."""
    from kprune import threads

    plan = threads.plan_threads(args.threads)
    threads.apply_environment(plan)
    threads.apply_threads(plan.threads)
    threads.ThreadGovernor(plan).install()
    console.status(plan.describe())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = console.flag_names(parser)
    console.set_quiet(args.quiet, args.verbose)
    console.log_in_cli_words(names)
    try:
        if args.command in ("prune", "evaluate"):
            _start_threads(args)
        return args.func(args)
    except KPruneError as error:
        print(f"kprune: error: {console.cli_words(str(error), names)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kprune: interrupted; nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
