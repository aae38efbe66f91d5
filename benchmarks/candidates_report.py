"""The "Beyond the paper" section of RESULTS.md: each candidate improvement against plain K-prune (the
paper's recipe, method `kprune`) on the same samples (same task, reduction and seed), from grid.json.

    python benchmarks/candidates_report.py [--grid benchmarks/results/grid.json] [--plot PATH]

report.py appends this section when the grid holds candidate cells (run them with
``python benchmarks/run_grid.py --study candidates``). The rule for a new default (issue 11): a gain on the
mean over tasks at 70% and at 80%, on no task (at 60/70/80%) a loss larger than plain K-prune's seed
standard deviation there, and at most 1.5x plain K-prune's pruning seconds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

sys.path.insert(0, str(HERE.parent / "python"))

from grid_spec import (CANDIDATE_METHODS, CANDIDATE_REDUCTIONS, KPRUNE_CONFIGS, METHODS, TASK_ORDER,  # noqa: E402
                       cell_key, scale)

BASE = "kprune"
MAX_COST = 1.5
RULE_REDUCTIONS = (0.7, 0.8)


def paired(grid: dict, task: str, method: str, reduction: float, base: str = BASE) -> list[tuple[dict, dict]]:
    """(candidate cell, base cell: plain K-prune unless said) for every seed where both ran."""
    cells = grid["cells"]
    out = []
    for c in cells.values():
        if c["task"] == task and c["method"] == method and abs(c["reduction_target"] - reduction) < 1e-9:
            other = cells.get(cell_key(task, base, reduction, c["seed"]))
            if other is not None:
                out.append((c, other))
    return sorted(out, key=lambda p: p[0]["seed"])


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def paired_row(grid: dict, task: str, method: str, reduction: float, base: str = BASE) -> dict | None:
    """Means over the seeds where ``method`` and ``base`` (plain K-prune) both ran (metric x100), their
    difference, the base's seed std and the pruning seconds of each; None when no seed has both."""
    pairs = paired(grid, task, method, reduction, base)
    if not pairs:
        return None
    cand = [scale(task, c["metric"]) for c, _ in pairs]
    base = [scale(task, b["metric"]) for _, b in pairs]
    return {"candidate": statistics.fmean(cand), "base": statistics.fmean(base),
            "diff": statistics.fmean(cand) - statistics.fmean(base), "base_std": _std(base), "seeds": len(pairs),
            "seconds": ([c["prune_seconds"] for c, _ in pairs], [b["prune_seconds"] for _, b in pairs])}


def losses_beyond_std(rows: dict, std_key: str) -> tuple[list[str], list[str]]:
    """Labels ("task NN%") of the rows whose difference is below minus their base's seed std, and of those
    with three seeds or more: a loss that stands whatever further cells give (one seed's std is no noise
    estimate)."""
    losing = [(t, r) for (t, r), row in rows.items() if row["diff"] < -row[std_key]]
    label = [f"{t} {int(round(100 * r))}%" for t, r in losing]
    return label, [name for name, key in zip(label, losing) if rows[key]["seeds"] >= 3]


def summarise(grid: dict, method: str) -> dict:
    """Per (task, reduction): paired means, the difference and plain K-prune's seed std; per reduction the
    mean difference over tasks; the time ratio; and the verdict of the rule."""
    tasks = [t for t in TASK_ORDER if any(c["task"] == t for c in grid["cells"].values())]
    rows, by_reduction, ratios = {}, {}, []
    for r in CANDIDATE_REDUCTIONS:
        diffs = []
        for t in tasks:
            row = paired_row(grid, t, method, r)
            if row is None:
                continue
            cand_s, base_s = row.pop("seconds")
            rows[(t, r)] = {**row, "extra_s": statistics.median(c - b for c, b in zip(cand_s, base_s))}
            diffs.append(row["diff"])
            ratios += [c / b for c, b in zip(cand_s, base_s)]
        if diffs:
            by_reduction[r] = (statistics.fmean(diffs), len(diffs))
    # the median of per-seed time ratios: a cell that ran beside other jobs does not decide it
    ratio = statistics.median(ratios) if ratios else None
    gains = all(r in by_reduction and by_reduction[r][0] > 0 for r in RULE_REDUCTIONS)
    losses, settled = losses_beyond_std(rows, "base_std")
    cheap = ratio is not None and ratio <= MAX_COST
    complete = all(rows.get((t, r), {}).get("seeds", 0) >= 3 for t in TASK_ORDER for r in CANDIDATE_REDUCTIONS)
    return {"rows": rows, "by_reduction": by_reduction, "time_ratio": ratio, "tasks": tasks, "complete": complete,
            "passes": complete and gains and not losses and cheap, "losses": losses, "settled_losses": settled, "gains": gains, "cheap": cheap}


def default_switches() -> dict:
    """The settings where this version's defaults (KPruneConfig(), resolved for a classifier) leave the
    paper's recipe; the precision of the measurement is the bf16 study's (bf16_report.py), not a candidate's."""
    from kprune.config import PAPER_RECIPE, KPruneConfig
    default, paper = (c.for_task("classification", 32).to_dict() for c in (KPruneConfig(), KPruneConfig.paper()))
    return {key: default[key] for key in PAPER_RECIPE if default[key] != paper[key] and key != "measure_dtype"}


def adopted(method: str) -> bool:
    """Whether this version's defaults are exactly the paper's recipe plus this candidate's switches."""
    return KPRUNE_CONFIGS[method] == default_switches()


def within_default(method: str) -> bool:
    """Whether the candidate's switches are all on by default, as part of a larger adopted candidate."""
    defaults = default_switches()
    return not adopted(method) and all(defaults.get(key) == value for key, value in KPRUNE_CONFIGS[method].items())


def plot(grid: dict, methods: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.6), dpi=110, squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods):
        s = summarise(grid, method)
        for t in s["tasks"]:
            xs = [100 * r for r in CANDIDATE_REDUCTIONS if (t, r) in s["rows"]]
            ys = [s["rows"][(t, r)]["diff"] for r in CANDIDATE_REDUCTIONS if (t, r) in s["rows"]]
            errs = [s["rows"][(t, r)]["base_std"] for r in CANDIDATE_REDUCTIONS if (t, r) in s["rows"]]
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=t, linewidth=1)
        done = [r for r in CANDIDATE_REDUCTIONS if r in s["by_reduction"]]
        ax.plot([100 * r for r in done], [s["by_reduction"][r][0] for r in done], color="black", linewidth=2.5,
                label="mean over tasks")
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_title(method.replace("kprune-", ""), fontsize=10)
        ax.set_xlabel("FLOPs reduction (%)")
    axes[0][0].set_ylabel("candidate − K-prune (metric ×100)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def render(grid: dict, plot_path: Path | None = None, plot_rel: str | None = None) -> str:
    """The markdown section ("" when the grid holds no candidate cell)."""
    methods = [m for m in CANDIDATE_METHODS if any(c["method"] == m for c in grid["cells"].values())]
    if not methods:
        return ""
    out = ["## Beyond the paper: candidate improvements against plain K-prune", "",
           "Each candidate is the paper's recipe plus one switch (`KPruneConfig`; off by default unless adopted), on the same "
           "samples as `kprune` (same task, reduction and seed). Filled by `python benchmarks/run_grid.py --study "
           "candidates` (resumable). Cell: candidate − K-prune, mean over the seeds both ran (metric ×100); in "
           "brackets K-prune's seed std. Extra s: median extra pruning seconds per cell, time: median per-seed ratio "
           "(cells ran beside other jobs: noisy). Rule "
           "for a new default: gain on the mean over tasks at 70% and 80%, no loss beyond K-prune's seed std on "
           f"any task, at most {MAX_COST}x the time.", ""]
    if plot_path is not None:
        plot(grid, methods, plot_path)
        out += [f"![candidates]({plot_rel or plot_path})", ""]
    header = "| candidate | task | " + " | ".join(f"{int(round(100 * r))}%" for r in CANDIDATE_REDUCTIONS) + " | extra s (80%) |"
    out += [header, "|---|---|" + "---|" * len(CANDIDATE_REDUCTIONS) + "---|"]
    verdicts = []
    for method in methods:
        s = summarise(grid, method)
        for t in s["tasks"]:
            cells = [f"{s['rows'][(t, r)]['diff']:+.2f} (±{s['rows'][(t, r)]['base_std']:.2f}, {s['rows'][(t, r)]['seeds']} seeds)"
                     if (t, r) in s["rows"] else "—" for r in CANDIDATE_REDUCTIONS]
            extra = s["rows"].get((t, 0.8), {}).get("extra_s")
            out.append(f"| {method} | {t} | " + " | ".join(cells) + f" | {'—' if extra is None else f'{extra:+.0f}'} |")
        means = [f"**{s['by_reduction'][r][0]:+.2f}** ({s['by_reduction'][r][1]} tasks)" if r in s["by_reduction"]
                 else "—" for r in CANDIDATE_REDUCTIONS]
        ratio = "—" if s["time_ratio"] is None else f"{s['time_ratio']:.2f}x time"
        out.append(f"| {method} | **mean over tasks** | " + " | ".join(means) + f" | {ratio} |")
        failures = (([] if s["gains"] else ["no gain on the mean at both 70% and 80%"])
                    + ([f"loses beyond seed noise on {', '.join(s['losses'])}"] if s["losses"] else [])
                    + ([] if s["cheap"] else [f"time ratio {ratio}"]))
        covered = sum(all(s["rows"].get((t, r), {}).get("seeds", 0) >= 3 for r in CANDIDATE_REDUCTIONS) for t in TASK_ORDER)
        so_far = "does not meet the rule: " + "; ".join(failures) if failures else "meets the rule"
        settled = s["settled_losses"]
        verdict = (so_far if s["complete"] else
                   f"{so_far} on the cells so far; decided by the three-seed loss on {', '.join(settled)}, whatever "
                   "the missing cells give" if settled else
                   f"{so_far} on the cells so far, but only {covered} of {len(TASK_ORDER)} tasks have three "
                   "seeds at every reduction: not decided")
        if adopted(method):
            verdict += "; **adopted: on by default** (`--recipe paper` / `KPruneConfig.paper()` turns it off)"
        elif within_default(method):
            verdict += "; its switches are on by default as part of " + ", ".join(
                f"`{m}`" for m in CANDIDATE_METHODS if adopted(m))
        verdicts.append(f"- `{method}` ({METHODS[method]}): {verdict}.")
    verdicts += [f"- `{method}` ({METHODS[method]}): no cells yet (not measured on the grid)."
                 for method in CANDIDATE_METHODS if method not in methods]
    return "\n".join(out + [""] + verdicts + [""])


def render_heldout(heldout: dict, selection: dict) -> str:
    """The held-out check (benchmarks/heldout_check.py): each candidate that ran on checkpoints no candidate
    was chosen on, against plain K-prune on the same samples, beside its result on the selection grid."""
    methods = [m for m in CANDIDATE_METHODS if any(c["method"] == m for c in heldout.get("cells", {}).values())]
    if not methods:
        return ""
    named = heldout.get("checkpoints", {})
    reductions = [r for r in CANDIDATE_REDUCTIONS if any(abs(c["reduction_target"] - r) < 1e-9
                                                          for c in heldout["cells"].values())]
    out = ["### Held-out check: checkpoints no candidate was chosen on", "",
           "Fine-tuning trials that are not the grid's checkpoints (another fine-tuning seed, or settings a "
           "re-tuning tried and did not adopt; benchmarks/finetune_trials.py), pruned by plain K-prune and the "
           "candidate on the same samples (`python benchmarks/heldout_check.py --checkpoint TASK=TRIAL ...`, "
           "results/grid-heldout.json). Cell: candidate − K-prune, mean over seeds (metric ×100), K-prune's seed "
           "std in brackets; K-prune's and the candidate's own means after the slash.", "",
           "| candidate | task | checkpoint (dev) | " + " | ".join(f"{int(round(100 * r))}%" for r in reductions) + " |",
           "|---|---|---|" + "---|" * len(reductions)]
    lines = []
    for method in methods:
        s = summarise(heldout, method)
        chosen = summarise(selection, method) if selection.get("cells") else None
        for t in s["tasks"]:
            info = named.get(t, {})
            metric = next(c["metric_name"] for c in heldout["cells"].values() if c["task"] == t)
            main = info.get("dev_metrics", {}).get(metric)
            label = f"{info.get('trial', '?')} ({'—' if main is None else f'{scale(t, main):.2f}'})"
            cells = []
            for r in reductions:
                row = s["rows"].get((t, r))
                cells.append("—" if row is None else f"{row['diff']:+.2f} (±{row['base_std']:.2f}, {row['seeds']} seeds) "
                                                     f"/ {row['base']:.2f} → {row['candidate']:.2f}")
            out.append(f"| {method} | {t} | {label} | " + " | ".join(cells) + " |")
        means = [f"**{s['by_reduction'][r][0]:+.2f}** ({s['by_reduction'][r][1]} tasks)" if r in s["by_reduction"]
                 else "—" for r in reductions]
        out.append(f"| {method} | **mean over tasks** | | " + " | ".join(means) + " |")
        there = "; on the selection grid " + ", ".join(
            f"{s_r[0]:+.2f} at {int(round(100 * r))}%" for r, s_r in sorted(chosen["by_reduction"].items())) \
            if chosen and chosen["by_reduction"] else ""
        lines.append(f"- `{method}` held out: mean " + ", ".join(
            f"{s['by_reduction'][r][0]:+.2f} over {s['by_reduction'][r][1]} tasks at {int(round(100 * r))}%"
            for r in reductions if r in s["by_reduction"])
            + (f"; loses beyond K-prune's seed std on {', '.join(s['losses'])}" if s["losses"] else "; no task below beyond "
               "K-prune's seed std") + there + ".")
    return "\n".join(out + [""] + lines + [""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", type=Path, default=HERE / "results" / "grid.json")
    parser.add_argument("--heldout", type=Path, default=HERE / "results" / "grid-heldout.json",
                        help="the held-out check's grid (benchmarks/heldout_check.py), rendered when it exists")
    parser.add_argument("--plot", type=Path, default=None, help="also draw the plot here (PNG)")
    args = parser.parse_args(argv)
    grid = json.loads(args.grid.read_text())
    print(render(grid, args.plot))
    if args.heldout.is_file():
        print(render_heldout(json.loads(args.heldout.read_text()), grid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
