"""Tables, fits, extrapolations and the plot of the scale study (benchmarks/bench_scale.py's results).

Time is taken as CPU seconds of the run's one thread (the machine is shared, so wall time mostly
measures the other jobs); the wall seconds are in the JSON and the table too.

Cost model. Step k of a model with L layers (2L sublayers) runs a knowledge pass through the 2L - k
sublayers >= k (from k = 1 with a backward), then a tuning pass and cache advance through sublayer k;
each pass is over the whole sample. So for k >= 1

    cpu_k = T * (a * (2L - k) + b_kind),        and cpu_0 = T * (c * 2L + b_att)

with T the sample's tokens, a the CPU seconds per token per sublayer of forward + backward, c of forward
only, b_att / b_ffn per token of an attention / FFN step's tuning pass, Gram, solve and advance (the
Gram of the kept FFN neurons is the larger). a and the b are fitted by least squares on every step
k >= 1 of every run of a width; c from the steps k = 0. A run then costs
T * (2L c + L (2L - 1) a + L (b_att + b_ffn)): quadratic in depth (about L + 1/2 passes of the whole
model) and linear in tokens. Peak RSS is fitted as m0 + mT * T + mL * L per width.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

#: configurations extrapolated to: (width, layers, tokens)
TARGETS = [("base", 12, 100_000), ("large", 24, 100_000)]
GEMM = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv", "aten::dot",
        "aten::addmm_"}
LEAST_SQUARES = ("kprune::gram_accumulate", "kprune::solve_damped")


# -- fits ----------------------------------------------------------------------------------------

def _steps(runs: list[dict]) -> tuple[list, list]:
    """(rows of k >= 1, rows of k = 0) as (L, k, T, cpu seconds)."""
    later, first = [], []
    for r in runs:
        for k, cpu in enumerate(r["step_cpu_seconds"]):
            (later if k else first).append((r["layers"], k, r["num_tokens"], cpu))
    return later, first


def fit_time(runs: list[dict]) -> dict | None:
    """The cost model's a, b_att, b_ffn, c (CPU seconds per token) from the runs of one width."""
    later, first = _steps(runs)
    if len({(2 * L - k, k % 2) for L, k, _, _ in later}) < 3 or not first:
        return None
    x = np.array([[(2 * L - k), float(k % 2 == 0), float(k % 2 == 1)] for L, k, T, _ in later])
    y = np.array([cpu / T for L, k, T, cpu in later])
    (a, b_att, b_ffn), *_ = np.linalg.lstsq(x, y, rcond=None)
    c = float(np.mean([(cpu / T - b_att) / (2 * L) for L, _, T, cpu in first]))
    return {"a": float(a), "b_att": float(b_att), "b_ffn": float(b_ffn), "c": c}


def predict_cpu(fit: dict, layers: int, tokens: int) -> float:
    """CPU seconds of the 2L steps of a run under the cost model."""
    return tokens * (2 * layers * fit["c"] + layers * (2 * layers - 1) * fit["a"]
                     + layers * (fit["b_att"] + fit["b_ffn"]))


def fit_memory(runs: list[dict]) -> dict | None:
    """Peak RSS (MB) = m0 + mT * tokens + mL * layers, least squares; None without enough variety."""
    if len({r["num_tokens"] for r in runs}) < 2 or len({r["layers"] for r in runs}) < 2:
        return None
    x = np.array([[1.0, r["num_tokens"], r["layers"]] for r in runs])
    y = np.array([r["peak_rss_mb"] for r in runs])
    (m0, mt, ml), *_ = np.linalg.lstsq(x, y, rcond=None)
    return {"m0": float(m0), "mT": float(mt), "mL": float(ml)}


def held_out_depth(runs: list[dict]) -> list[tuple[str, float, float]]:
    """(key, predicted, measured CPU s) of the deepest runs, from a fit on the shallower runs only."""
    deepest = max(r["layers"] for r in runs)
    fit = fit_time([r for r in runs if r["layers"] < deepest])
    if fit is None:
        return []
    return [(r["key"], predict_cpu(fit, r["layers"], r["num_tokens"]), sum(r["step_cpu_seconds"]))
            for r in runs if r["layers"] == deepest]


def by_width(data: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in sorted(data["runs"].values(), key=lambda r: (r["hidden"], r["layers"], r["num_tokens"])):
        out.setdefault(r["width"], []).append(r)
    return out


def fits(data: dict) -> dict:
    """Per width: the time fit, the memory fit, and the worst relative error of the time fit on a run."""
    out = {}
    for width, runs in by_width(data).items():
        time_fit, mem_fit = fit_time(runs), fit_memory(runs)
        errors = [predict_cpu(time_fit, r["layers"], r["num_tokens"]) / sum(r["step_cpu_seconds"]) - 1
                  for r in runs] if time_fit else []
        out[width] = {"time": time_fit, "memory": mem_fit,
                      "worst_error": max(errors, key=abs) if errors else None}
    return out


# -- profile -------------------------------------------------------------------------------------

def category(name: str, ancestors: list[str]) -> str:
    """Where an operator's self time goes: least squares (the Gram accumulation, its GEMMs included,
    and the solve), GEMM, attention, knowledge statistics, other kprune kernels, other aten ops."""
    if any(a.startswith(LEAST_SQUARES) for a in ancestors + [name]):
        return "least squares (Gram + solve)"
    if name in GEMM or "linear" in name or "matmul" in name:
        return "GEMM"
    if "softmax" in name or "scaled_dot_product" in name or "attention" in name:
        return "attention (softmax / SDPA)"
    if name.startswith(("kprune::accumulate_importance", "kprune::accumulate_group_sums")):
        return "knowledge sums"
    if name.startswith("kprune::"):
        return "other kprune kernels"
    return "other aten ops (elementwise, copies, LayerNorm)"


def categorise(events, wall: float) -> dict:
    """Seconds per category from torch.profiler's events (self CPU time), and the rest of the wall time
    (Python and framework overhead outside any operator)."""
    seconds: dict[str, float] = {}
    for e in events:
        ancestors, parent = [], e.cpu_parent
        while parent is not None:
            ancestors.append(parent.name)
            parent = parent.cpu_parent
        key = category(e.name, ancestors)
        seconds[key] = seconds.get(key, 0.0) + e.self_cpu_time_total / 1e6
    seconds["outside operators (Python, autograd, dispatch)"] = max(0.0, wall - sum(seconds.values()))
    return {k: round(v, 3) for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])}


# -- rendering -----------------------------------------------------------------------------------

HEADER = ("| config | layers | hidden | tokens | CPU s / step: mean (first, last) | run CPU s | run wall s | "
          "phases wall s: measure / tune / advance | peak RSS MB | working MB |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def row(r: dict) -> str:
    p = r["phase_seconds"]
    return (f"| {r['key']} | {r['layers']} | {r['hidden']} | {r['num_tokens']:,} | {r['step_cpu_mean']:.1f} "
            f"({r['step_cpu_first']:.1f}, {r['step_cpu_last']:.1f}) | {r['run_cpu_seconds']:.0f} | "
            f"{r['run_seconds']:.0f} | {p['measure']:.0f} / {p['tune']:.0f} / {p['advance']:.0f} | "
            f"{r['peak_rss_mb']:,.0f} | {r['working_mb']:,.0f} |")


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def extrapolations(data: dict) -> list[dict]:
    """The targets from the fits: a target width without its own fit is not extrapolated."""
    out, f = [], fits(data)
    for width, layers, tokens in TARGETS:
        tf, mf = (f.get(width) or {}).get("time"), (f.get(width) or {}).get("memory")
        if tf is None:
            continue
        cpu = predict_cpu(tf, layers, tokens)
        knowledge = tokens * layers * (2 * tf["c"] + (2 * layers - 1) * tf["a"])
        out.append({"key": f"{width}-L{layers}-T{tokens}", "cpu_seconds": cpu, "step_mean": cpu / (2 * layers),
                    "knowledge_share": knowledge / cpu,
                    "peak_rss_mb": mf["m0"] + mf["mT"] * tokens + mf["mL"] * layers if mf else None,
                    "measured": f"{width}-L{layers}-T{tokens}" in data["runs"]})
    return out


def render(data: dict) -> str:
    lines = ["Measured (1 thread, shared machine):", "", HEADER]
    lines += [row(r) for runs in by_width(data).values() for r in runs]
    lines += ["", "Fits (CPU seconds per token; see scale_analysis.py):", ""]
    for width, f in fits(data).items():
        t, m = f["time"], f["memory"]
        if t:
            lines.append(f"- {width}: a = {t['a'] * 1e6:.1f} us (forward + backward, per sublayer), c = "
                         f"{t['c'] * 1e6:.1f} us (forward only, per sublayer), b = {t['b_att'] * 1e6:.1f} / "
                         f"{t['b_ffn'] * 1e6:.1f} us (tune + advance of an attention / FFN step); worst run error "
                         f"{f['worst_error']:+.0%}")
        for key, predicted, measured in held_out_depth(by_width(data)[width]):
            lines.append(f"- {width}: held out, {key} from the shallower runs' fit: {predicted:.0f} CPU s "
                         f"predicted, {measured:.0f} measured ({predicted / measured - 1:+.0%})")
        if m:
            lines.append(f"- {width}: peak RSS = {m['m0']:.0f} MB + {m['mT'] * 1e3:.2f} MB per 1k tokens + "
                         f"{m['mL']:.0f} MB per layer")
    ext = extrapolations(data)
    if ext:
        lines += ["", "Extrapolated from the fits (not measured):", ""]
        for e in ext:
            rss = f", peak RSS {e['peak_rss_mb']:,.0f} MB" if e["peak_rss_mb"] else ""
            lines.append(f"- {e['key']}: {_hours(e['cpu_seconds'])} CPU ({e['step_mean']:.0f} s per step, "
                         f"{e['knowledge_share']:.0%} of it in the knowledge passes){rss}"
                         + (" (also measured)" if e["measured"] else ""))
    prof = data.get("profile")
    if prof and "categories" in prof:
        total = sum(prof["categories"].values())
        lines += ["", f"Profile of {prof['key']} (torch.profiler, {prof['wall_seconds']:.0f} s wall):", "",
                  "| where | share |", "|---|---|"]
        lines += [f"| {k} | {v / total:.0%} |" for k, v in sorted(prof["categories"].items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    """Four panels: CPU s per step and peak RSS against tokens (shallowest depth), run CPU s and peak RSS
    against layers (smallest sample); the fitted model as lines, extrapolation targets as open marks."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = fits(data)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for (width, runs), colour in zip(by_width(data).items(), ["C0", "C1", "C2", "C3"]):
        depth = min(r["layers"] for r in runs)
        tokens = min(r["num_tokens"] for r in runs)
        by_t = [r for r in runs if r["layers"] == depth]
        by_l = [r for r in runs if r["num_tokens"] == tokens]
        label = f"{width} (d={runs[0]['hidden']})"
        axes[0, 0].plot([r["num_tokens"] for r in by_t], [r["step_cpu_mean"] for r in by_t], "o", color=colour,
                        label=f"{label}, {depth} layers")
        axes[0, 1].plot([r["layers"] for r in by_l], [r["run_cpu_seconds"] for r in by_l], "o", color=colour,
                        label=f"{label}, {tokens:,} tokens")
        axes[1, 0].plot([r["num_tokens"] for r in by_t], [r["peak_rss_mb"] for r in by_t], "o", color=colour,
                        label=f"{label}, {depth} layers")
        axes[1, 1].plot([r["layers"] for r in by_l], [r["peak_rss_mb"] for r in by_l], "o", color=colour,
                        label=f"{label}, {tokens:,} tokens")
        tf, mf = f[width]["time"], f[width]["memory"]
        ts = np.linspace(0, max(100_000, max(r["num_tokens"] for r in runs)), 50)
        ls = np.arange(1, max([L for w, L, _ in TARGETS if w == width] + [depth + 1]) + 1)
        if tf:
            axes[0, 0].plot(ts, [predict_cpu(tf, depth, t) / (2 * depth) for t in ts], "-", color=colour, lw=1)
            axes[0, 1].plot(ls, [predict_cpu(tf, L, tokens) for L in ls], "-", color=colour, lw=1)
        if mf:
            axes[1, 0].plot(ts, mf["m0"] + mf["mT"] * ts + mf["mL"] * depth, "-", color=colour, lw=1)
            axes[1, 1].plot(ls, mf["m0"] + mf["mT"] * tokens + mf["mL"] * ls, "-", color=colour, lw=1)
    axes[0, 0].set(xlabel="sample tokens", ylabel="CPU seconds per sublayer step (mean)")
    axes[0, 1].set(xlabel="layers", ylabel="CPU seconds per run (2L steps)", yscale="log")
    axes[1, 0].set(xlabel="sample tokens", ylabel="peak RSS (MB)")
    axes[1, 1].set(xlabel="layers", ylabel="peak RSS (MB)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("K-prune scale study: random BERT, 50% FLOPs, 1 thread, shared machine\n"
                 "points measured, lines the fitted cost model (extrapolated beyond the points)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

