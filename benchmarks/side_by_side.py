"""K-prune (ours), the paper's code, Kwon (ours) and Kwon et al.'s code, side by side: one table.

    python benchmarks/side_by_side.py --run --paper-code DIR --kwon-code DIR --python VENV/bin/python \
        [--tasks stsb mrpc sst2 squad qqp] [--reductions 0.5 0.8] [--num-tokens 20000]   # runs the missing cells, then renders
    python benchmarks/side_by_side.py                                     # renders the table from the JSON

Ours run through run_grid.py (into results/side_by_side.json: the paper's recipe, this version's defaults
in float32 and with bf16 measurement, and Kwon; a defaults cell missing there is taken from the seed-0 cells
of `run_grid.py --study bf16`), the originals through run_originals.py
(into results/originals.json), on the same fine-tuned checkpoint, the same sample size and seed, one
cell at a time, each timed and its peak RSS taken by the same harness. The table is printed and
benchmarks/RESULTS.md re-rendered (report.py includes it).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from grid_spec import DEFAULT_CONFIGS, TASK_ORDER, scale  # noqa: E402

RESULTS = HERE / "results"
OURS, ORIGINALS, BF16 = RESULTS / "side_by_side.json", RESULTS / "originals.json", RESULTS / "grid-bf16.json"
BEGIN, END = "<!-- side-by-side:begin -->", "<!-- side-by-side:end -->"
METHODS = [("kprune", "K-prune (kprune, paper's recipe)"), ("kprune-default", "K-prune (kprune, defaults, float32)"),
           ("kprune-default-bf16", "K-prune (kprune, defaults, bf16)"), ("kprune-paper", "K-prune (paper's code)"),
           ("kwon", "Kwon (ours)"), ("kwon-paper", "Kwon (their code)")]
# the paper's recipe, then this version's defaults in float32 and in bf16 (the bf16 study's seed-0 cells)
OURS_AGAINST_PAPER = ("kprune", "kprune-default", "kprune-default-bf16")
TASK_NAMES = {"stsb": "STS-B", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "squad": "SQuAD"}


def cells_of(path: Path) -> dict:
    return json.loads(path.read_text()).get("cells", {}) if path.is_file() else {}


def our_cells(results: Path = RESULTS) -> dict:
    """Our side: side_by_side.json, and for a defaults cell missing there the bf16 study's seed-0 cell
    (grid-bf16.json: same checkpoint, sample size and seed), both in ``results``."""
    defaults = {k: c for k, c in cells_of(results / BF16.name).items()
                if c["method"] in DEFAULT_CONFIGS and c["seed"] == 0}
    return {**defaults, **cells_of(results / OURS.name)}


def table(ours: dict, originals: dict) -> str:
    cells = {**ours, **originals}
    keys = sorted({(c["task"], c["reduction_target"], c["seed"]) for c in cells.values()},
                  key=lambda k: (TASK_ORDER.index(k[0]) if k[0] in TASK_ORDER else len(TASK_ORDER), k))
    lines = ["| task | FLOPs reduction | method | metric | achieved | pruning s | peak MB |",
             "|---|---|---|---|---|---|---|"]
    for task, reduction, seed in keys:
        for method, label in METHODS:
            cell = cells.get(f"{task}/{method}/{reduction:.2f}/{seed}")
            if cell is None:
                continue
            lines.append(f"| {TASK_NAMES.get(task, task)} | {reduction:.0%} | {label} | "
                         f"{cell['metric_name']} {scale(task, cell['metric']):.2f} | {100 * cell['flops_reduction']:.1f}% | "
                         f"{cell['prune_seconds']:.0f} | {cell['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def dev_noise(metric_name: str, value: float, num_examples: int | None) -> float | None:
    """One standard deviation of a dev-set score from the finite dev set, in points: binomial for
    accuracy; for SQuAD's F1 / exact match (given in points) its upper bound, since a mean of per-question
    scores in [0, 1] has a variance of at most m (1 - m) (Bhatia-Davis); Fieller et al.'s
    1.06 (1 - rho^2) / sqrt(n - 3) for Spearman / Pearson; None otherwise."""
    if not num_examples or num_examples < 4:
        return None
    if metric_name in ("f1", "exact_match") and value > 1:
        value /= 100
    if metric_name in ("accuracy", "f1", "exact_match"):
        return 100 * math.sqrt(value * (1 - value) / num_examples)
    if metric_name in ("spearmanr", "pearson"):
        return 100 * 1.06 * (1 - value ** 2) / math.sqrt(num_examples - 3)
    return None


def paired_with_paper(ours: dict, originals: dict, method: str = "kprune") -> list[tuple[dict, dict]]:
    """(kprune cell of ``method``, paper's-code cell) of every task, reduction and seed both ran, in the grid's
    task order."""
    ours_part, paper_part = f"/{method}/", "/kprune-paper/"
    pairs = [(o, originals[k.replace(ours_part, paper_part)]) for k, o in ours.items()
             if ours_part in k and k.replace(ours_part, paper_part) in originals]
    return sorted(pairs, key=lambda p: (TASK_ORDER.index(p[0]["task"]) if p[0]["task"] in TASK_ORDER else 99,
                                        p[0]["reduction_target"], p[0]["seed"]))


def comparisons(ours: dict, originals: dict, method: str = "kprune") -> list[dict]:
    """Per paired cell: the score difference in points, the dev set's noise, and the time and memory ratios."""
    rows = []
    for mine, theirs in paired_with_paper(ours, originals, method):
        task = mine["task"]
        rows.append({"name": f"{TASK_NAMES.get(task, task)} | {mine['reduction_target']:.0%}",
                     "gap": scale(task, mine["metric"]) - scale(task, theirs["metric"]),
                     "noise": dev_noise(mine["metric_name"], (mine["metric"] + theirs["metric"]) / 2,
                                        int(mine.get("metrics", {}).get("num_examples") or 0)),
                     "speed": theirs["prune_seconds"] / mine["prune_seconds"],
                     "memory": mine["peak_rss_mb"] / theirs["peak_rss_mb"]})
    return rows


def against_paper(ours: dict, originals: dict, method: str = "kprune") -> str:
    """Per task and reduction: kprune against the paper's code on accuracy (with the dev set's noise),
    pruning seconds and peak memory (issue 12's targets: not below beyond noise, >= 5x faster, <= 1/3 memory)."""
    rows = comparisons(ours, originals, method)
    lines = ["| task | FLOPs reduction | kprune - paper's code (points) | dev-set noise (1 std) | paper's s / ours "
             "| ours MB / paper's |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['gap']:+.2f} | {'–' if r['noise'] is None else format(r['noise'], '.2f')} "
              f"| {r['speed']:.1f}x | {r['memory']:.2f} |" for r in rows]
    return "\n".join(lines) if rows else ""


def summary(ours: dict, originals: dict, method: str = "kprune") -> str:
    """The issue's three targets against the paper's code, counted over the paired cells."""
    rows = comparisons(ours, originals, method)
    if not rows:
        return ""
    below = [f"{r['name'].replace(' | ', ' ')} ({r['gap']:+.2f}, noise "
             f"{'unknown' if r['noise'] is None else format(r['noise'], '.2f')})"
             for r in rows if r["gap"] < 0 and (r["noise"] is None or -r["gap"] > r["noise"])]
    speed, memory, n = [r["speed"] for r in rows], [r["memory"] for r in rows], len(rows)
    who = dict(METHODS)[method].replace("K-prune (", "").rstrip(")")   # e.g. "kprune, defaults"
    return (f"Over the {n} paired cells ({who}): its score is at or above the paper's code's, or below it by less than "
            f"one dev-set standard deviation, in {n - len(below)} of {n}"
            + (f"; below by more in {', '.join(below)}" if below else "") + ". "
            f"Peak memory {min(memory):.2f}-{max(memory):.2f} of the paper's code's (target at most 1/3: "
            f"met in {sum(m <= 1 / 3 for m in memory)} of {n}). "
            f"The paper's code takes {min(speed):.1f}-{max(speed):.1f}x its pruning time (target 5x: met in "
            f"{sum(x >= 5 for x in speed)} of {n}).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="store_true", help="run the missing cells first (ours, then the originals)")
    parser.add_argument("--paper-code", type=Path)
    parser.add_argument("--kwon-code", type=Path)
    parser.add_argument("--python", type=Path, help="interpreter of the originals' virtual environment")
    parser.add_argument("--tasks", nargs="+", default=TASK_ORDER, choices=TASK_ORDER,
                        help="default: every task of the grid (all of them run in both originals)")
    parser.add_argument("--reductions", nargs="+", default=["0.5", "0.8"])
    parser.add_argument("--num-tokens", default="20000")
    parser.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    parser.add_argument("--threads", default="1")
    parser.add_argument("--no-write", action="store_true", help="print the table only, leave RESULTS.md alone")
    parser.add_argument("--results-dir", type=Path, default=RESULTS,
                        help="where the cells' JSON files are (another machine's run: printed only, RESULTS.md "
                             "keeps the default folder's table)")
    args = parser.parse_args()
    ours_path, originals_path = args.results_dir / OURS.name, args.results_dir / ORIGINALS.name
    if args.results_dir.resolve() != RESULTS.resolve():
        args.no_write = True
    if args.run:
        common = ["--tasks", *args.tasks, "--reductions", *args.reductions, "--seeds", "0",
                  "--num-tokens", args.num_tokens, "--data-dir", args.data_dir, "--threads", args.threads]
        subprocess.run([sys.executable, str(HERE / "run_grid.py"), *common, "--methods", *OURS_AGAINST_PAPER, "kwon",
                        "--no-finetune", "--no-report", "--output", str(ours_path)], check=True)
        if not (args.paper_code and args.kwon_code and args.python):
            parser.error("--run needs --paper-code, --kwon-code and --python for the originals")
        subprocess.run([sys.executable, str(HERE / "run_originals.py"), *common, "--paper-code", str(args.paper_code),
                        "--kwon-code", str(args.kwon_code), "--python", str(args.python),
                        "--output", str(originals_path)], check=True)
    ours, originals = our_cells(args.results_dir), cells_of(originals_path)
    print(table(ours, originals))
    for method in OURS_AGAINST_PAPER:
        print(f"\n{method}:")
        print(against_paper(ours, originals, method))
        print()
        print(summary(ours, originals, method))
    if not args.no_write:   # RESULTS.md is rendered whole by report.py, which includes this table
        subprocess.run([sys.executable, str(HERE / "report.py")], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
