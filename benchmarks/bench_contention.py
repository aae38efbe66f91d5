"""A prune alone and under busy background processes: how much slower does contention make it?

    python benchmarks/bench_contention.py [--num-tokens 20000] [--busy 2] [--baseline] [--out PATH]

Runs ``kprune prune`` (the packaged MiniLM with a seeded 2-class head, the vendored SST-2 sample) in a
fresh process: once on its own, then while ``--busy`` processes spin on the CPU. With ``--baseline``
it also runs the loaded case the way kprune ran before it chose its threads (a thread per core and
libgomp's default spinning wait: ``KPRUNE_THREADS=<cores> GOMP_SPINCOUNT=300000``). A fair share on a
machine with C cores and B busy processes is about max(1, (B + 1) / C) times the quiet time.
Prints a table and writes JSON (default benchmarks/results/contention.json).
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "contention.json"
DATA = REPO / "examples" / "data" / "sst2-sample"


def make_model(folder: Path) -> Path:
    """The packaged MiniLM with a seeded classification head, saved to ``folder``."""
    import torch
    import transformers

    sys.path.insert(0, str(REPO / "examples"))
    from demo import minilm_dir

    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(folder)
    return folder


def prune_seconds(model: Path, num_tokens: int, output: Path, env_extra: dict) -> tuple[float, str]:
    """Wall time of one ``kprune prune`` process, and the thread line it logged."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "KPRUNE_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "python"), str(REPO), env.get("PYTHONPATH", "")])
    env.update(env_extra)
    command = [sys.executable, "-m", "kprune.cli", "prune", "--model", str(model), "--task", "sst2", "--data",
               str(DATA), "--num-tokens", str(num_tokens), "--output", str(output), "--overwrite"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"prune failed:\n{done.stderr[-2000:]}")
    threads = next((line for line in done.stderr.splitlines() if line.startswith("kprune: threads:")), "")
    return seconds, threads.removeprefix("kprune: ")


def spinners(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-tokens", type=int, default=20_000, help="tokens in the pruning sample")
    parser.add_argument("--busy", type=int, default=2, help="background processes that spin on the CPU")
    parser.add_argument("--baseline", action="store_true", help="also run the loaded case with a thread per "
                                                                "core and spinning waits")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file to write")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(Path(tmp) / "model")
        cases = [("alone", 0, {}), (f"{args.busy} busy", args.busy, {})]
        if args.baseline:
            cases.append((f"{args.busy} busy, old threads", args.busy,
                          {"KPRUNE_THREADS": str(cores), "GOMP_SPINCOUNT": "300000"}))
        for name, busy, extra in cases:
            background = spinners(busy)
            try:
                time.sleep(1.0 if busy else 0.0)    # let the load show in /proc/stat
                seconds, threads = prune_seconds(model, args.num_tokens, Path(tmp) / "out", extra)
            finally:
                for process in background:
                    process.kill()
                    process.wait()
            rows.append({"case": name, "busy_processes": busy, "seconds": round(seconds, 2), "threads": threads})
    quiet = rows[0]["seconds"]
    for row in rows:
        row["slowdown"] = round(row["seconds"] / quiet, 2)
    result = {"command": " ".join(["python", "benchmarks/bench_contention.py"] + sys.argv[1:]), "cores": cores,
              "num_tokens": args.num_tokens, "fair_slowdown": round(max(1.0, (args.busy + 1) / cores), 2),
              "load_before": os.getloadavg(), "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'case':<28} {'seconds':>8} {'slowdown':>9}  threads")
    for row in rows:
        print(f"{row['case']:<28} {row['seconds']:>8.1f} {row['slowdown']:>8.2f}x  {row['threads']}")
    print(f"fair share: {result['fair_slowdown']:.2f}x ({cores} cores); written to {args.out}")


if __name__ == "__main__":
    main()
