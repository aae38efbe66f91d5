"""Render the README's kernel table from pytest-benchmark JSON: each op against the PyTorch reference
of the same op (kprune_ext.reference) and against the baseline it must beat.

    python benchmarks/kernel_table.py [benchmarks/results/kernels.json]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

# group -> (row label, baseline implementation name or None, baseline label)
ROWS = {
    "importance[samples]": ("importance accumulation, one group per sample", None, ""),
    "importance[batch]": ("importance accumulation, one group per batch", None, ""),
    "importance[logical groups]": ("per-group sums, logical batches spread over compute batches", None, ""),
    "masked_ffn forward (50% kept)": ("masked FFN forward, 50% of neurons kept", "dense", "dense masked"),
    "masked_ffn forward+backward (50% kept)": ("masked FFN forward + backward, 50% kept", None, ""),
    "masked_attention_output forward (50% kept)": ("masked attention output, 6 of 12 heads kept", "dense",
                                                   "dense masked"),
    "solve_damped ffn 1x3072 (768 right-hand sides)": ("damped least squares, 1 system of 3,072", "lstsq", "lstsq"),
    "solve_damped heads 12x64 (768 right-hand sides)": ("damped least squares, 12 systems of 64", "lstsq", "lstsq"),
    "gram_accumulate (1,536 of 3,072 columns, float64 sums)": ("Gram AᵀA + AᵀB, 1,536 of 3,072 columns, float64 sums",
                                                               None, ""),
    "gram_accumulate (1,536 of 3,072 columns, float32 sums)": ("Gram AᵀA + AᵀB, 1,536 of 3,072 columns, float32 sums",
                                                               None, ""),
    "activation_backward (gelu, 16,384 x 3,072)": ("GELU recomputed with its backward", None, ""),
    "attention forward (12 heads of 64, 64-128 of 128 tokens real)": (
        "softmax attention over real keys, forward", "aten", "aten SDPA, key mask"),
    "attention forward+backward (12 heads of 64, 64-128 of 128 tokens real)": (
        "softmax attention over real keys, forward + backward", "aten", "aten SDPA, key mask"),
}


IMPLS = ("ext", "ref", "dense", "lstsq", "aten")   # the implementation's id among a case's parameters


def medians(path: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for bench in json.loads(path.read_text())["benchmarks"]:
        ids = bench["name"].split("[", 1)[1].rstrip("]").split("-")
        impl = next(i for i in ids if i in IMPLS)
        out.setdefault(bench["group"], {})[impl] = bench["stats"]["median"] * 1000
    return out


def table(path: Path) -> str:
    times = medians(path)
    lines = ["| operation (BERT-base shapes: 16,384 tokens, hidden 768, 3,072 neurons) | compiled | "
             "PyTorch reference of the op | vs reference | baseline | vs baseline |",
             "|---|---|---|---|---|---|"]
    for group, (label, base, base_label) in ROWS.items():
        t = times.get(group)
        if not t or "ext" not in t:
            continue
        ref = t.get("ref")
        row = [label, f"{t['ext']:.1f} ms", f"{ref:.1f} ms" if ref else "-", f"{ref / t['ext']:.2f}x" if ref else "-"]
        # where no separate baseline exists, the reference is the unfused PyTorch composition the op must beat
        if base and base in t:
            row += [f"{base_label} {t[base]:.1f} ms", f"{t[base] / t['ext']:.2f}x"]
        else:
            row += ["= reference", "-"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "kernels.json")))
