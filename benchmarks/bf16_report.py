"""The bf16 decision (issue 15) from grid-bf16.json: K-prune measured in bfloat16 against the same run in
float32, on the same samples (task, reduction, seed), at 50% and 80%: first the paper's recipe (`kprune-bf16`
against `kprune`), then this version's defaults (`kprune-default-bf16` against `kprune-default`), which decides.

    python benchmarks/bf16_report.py [--grid benchmarks/results/zen4/grid-bf16.json]

Fill the cells with ``python benchmarks/run_grid.py --study bf16`` (into grid-bf16.json: its float32 cells
run on the same code as its bf16 cells). The accuracy rule: bf16 could become the default on
CPUs with native bf16 only if, on every task the study covers and at both reductions, its mean over seeds
is not below the float32 mean by more than float32's seed standard deviation; and only once all five
tasks are in (BATCH_INVARIANCE: the compute batching no longer stands in the way). report.py appends this section
when the grid holds bf16 cells.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from candidates_report import losses_beyond_std, paired_row  # noqa: E402
from grid_spec import BF16_PAIRS, BF16_REDUCTIONS, METHODS, TASK_ORDER  # noqa: E402

DECIDING = "kprune-default-bf16"   # the recipe a new default would measure in bf16: this version's defaults


def summarise(grid: dict, method: str = DECIDING) -> dict:
    """Per (task, reduction): float32 and bf16 means over the seeds both ran (``method`` against its float32
    base), float32's seed std, the time ratio; the tasks where bf16 loses beyond that std; whether every task
    is covered."""
    rows, seconds = {}, [[], []]
    for t in TASK_ORDER:
        for r in BF16_REDUCTIONS:
            row = paired_row(grid, t, method, r, base=BF16_PAIRS[method])
            if row is None:
                continue
            low_s, full_s = row["seconds"]
            rows[(t, r)] = {"bf16": row["candidate"], "float32": row["base"], "diff": row["diff"],
                            "float32_std": row["base_std"], "seeds": row["seeds"], "time_ratio": sum(low_s) / sum(full_s)}
            seconds[0] += low_s
            seconds[1] += full_s
    tasks = [t for t in TASK_ORDER if any(key[0] == t for key in rows)]
    losses, settled = losses_beyond_std(rows, "float32_std")
    complete = all((t, r) in rows and rows[(t, r)]["seeds"] >= 3 for t in TASK_ORDER for r in BF16_REDUCTIONS)
    return {"rows": rows, "tasks": tasks, "losses": losses, "settled_losses": settled, "complete": complete,
            "time_ratio": sum(seconds[0]) / sum(seconds[1]) if seconds[1] else None,
            "adopt": complete and not losses}


def verdict(s: dict) -> str:
    if s["settled_losses"]:
        return f"bf16 loses beyond float32's seed spread on {', '.join(s['settled_losses'])}: float32 stays the default."
    if s["losses"]:
        return (f"bf16 is below float32 on {', '.join(s['losses'])} with fewer than three seeds (not decided); "
                "float32 stays the default until every task is in.")
    if not s["complete"]:
        missing = [t for t in TASK_ORDER if t not in s["tasks"]]
        return ("no loss beyond the seed spread so far, but the study is incomplete"
                + (f" (no cells for {', '.join(missing)})" if missing else " (fewer than 3 seeds somewhere)")
                + ": float32 stays the default until every task is in.")
    from kprune.config import KPruneConfig
    within = "bf16 stays within float32's seed spread on every task at both reductions, three seeds each"
    if KPruneConfig().measure_dtype == "auto":
        return within + ", so it is the default: " + ADOPTED
    return within + ", so accuracy no longer keeps it from being the default; it stays opt-in (`measure_dtype=\"auto\"`)."


# What the default became once the rule held, and why the batching no longer stood in the way (measured with
# tests/test_distributed.py's two-rank check run with bf16 as the default, 2026-12-02, and the three-rank bf16 case)
ADOPTED = ("`measure_dtype=\"auto\"` measures in bf16 where the CPU or GPU computes it natively (AVX512-BF16 or AMX "
           "on a CPU) and in float32 elsewhere; `measure_dtype=\"float32\"` (`--measure-dtype float32`) keeps the "
           "float32 measurement, and the paper's recipe (`KPruneConfig.paper()`, `--recipe paper`) pins it. Before the "
           "compiled attention (it reads only real keys) and the float64 least-squares sums, bf16 scores depended on "
           "how the sample is cut into compute batches and processes (two data-parallel ranks gave scores up to 2.2% "
           "(relative) away from one process's); now three ranks re-fit the same weights as one process, in bf16 as "
           "in float32 (tests/test_distributed.py, tests/test_pruner.py).")


def table(s: dict) -> list[str]:
    out = ["| task | reduction | float32 (± seed std) | bf16 | bf16 − float32 | seeds | time ratio |",
           "|---|---|---|---|---|---|---|"]
    for (t, r), row in s["rows"].items():
        out.append(f"| {t} | {int(round(100 * r))}% | {row['float32']:.2f} (±{row['float32_std']:.2f}) | "
                   f"{row['bf16']:.2f} | {row['diff']:+.2f} | {row['seeds']} | {row['time_ratio']:.2f}x |")
    return out


def render(grid: dict, path: Path = HERE / "results" / "grid-bf16.json", machine: str = "") -> str:
    """The markdown section, one table per recipe studied ("" when the grid holds no bf16 cell); ``path``: the
    grid's file, named in the text."""
    source = path.resolve().relative_to(HERE.parent) if path.resolve().is_relative_to(HERE.parent) else path
    studied = {m: summarise(grid, m) for m in BF16_PAIRS}
    studied = {m: s for m, s in studied.items() if s["rows"]}
    if not studied:
        return ""
    out = ["## bf16 measurement against float32 (issue 15)", "",
           "K-prune with the knowledge passes under bfloat16 autocast (`measure_dtype=\"bfloat16\"`) against the "
           f"same run in float32, same samples. Filled by `python benchmarks/run_grid.py --study bf16` (resumable; "
           f"{source}){machine}. Metric ×100, means over the seeds both ran; time: bf16 / float32 "
           "pruning seconds (cores shared: noisy).", ""]
    for method, s in studied.items():
        base = BF16_PAIRS[method]
        out += [f"### `{method}` against `{base}`: {METHODS[base]}", ""] + table(s) + ["", f"Decision: {verdict(s)}", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", type=Path, default=HERE / "results" / "zen4" / "grid-bf16.json")
    args = parser.parse_args(argv)
    print(render(json.loads(args.grid.read_text()), args.grid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
