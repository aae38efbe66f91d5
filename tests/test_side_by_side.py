"""benchmarks/side_by_side.py: the table of kprune against the paper's code (pairs, ratios, dev-set noise)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import side_by_side  # noqa: E402


def cell(task, method, reduction, metric, seconds, mb, name="accuracy", n=400):
    return {"task": task, "method": method, "reduction_target": reduction, "seed": 0, "metric_name": name,
            "metric": metric, "metrics": {name: metric, "num_examples": n}, "flops_reduction": reduction,
            "prune_seconds": seconds, "peak_rss_mb": mb}


def test_dev_noise_formulas():
    assert side_by_side.dev_noise("accuracy", 0.8, 400) == pytest.approx(100 * math.sqrt(0.8 * 0.2 / 400))
    assert side_by_side.dev_noise("spearmanr", 0.5, 1503) == pytest.approx(100 * 1.06 * 0.75 / math.sqrt(1500))
    assert side_by_side.dev_noise("f1", 60.0, 2000) == pytest.approx(100 * math.sqrt(0.6 * 0.4 / 2000))  # SQuAD points
    assert side_by_side.dev_noise("matthews_correlation", 0.6, 2000) is None
    assert side_by_side.dev_noise("accuracy", 0.8, None) is None


def test_against_paper_pairs_cells_and_states_ratios():
    ours = {"mrpc/kprune/0.50/0": cell("mrpc", "kprune", 0.5, 0.80, 100.0, 700.0),
            "stsb/kprune/0.80/0": cell("stsb", "kprune", 0.8, 0.81, 50.0, 600.0, name="spearmanr", n=1500),
            "sst2/kprune/0.50/0": cell("sst2", "kprune", 0.5, 0.85, 90.0, 700.0),   # no paper cell: left out
            "mrpc/kwon/0.50/0": cell("mrpc", "kwon", 0.5, 0.70, 30.0, 1000.0)}
    theirs = {"mrpc/kprune-paper/0.50/0": cell("mrpc", "kprune-paper", 0.5, 0.81, 250.0, 2100.0),
              "stsb/kprune-paper/0.80/0": cell("stsb", "kprune-paper", 0.8, 0.80, 400.0, 2400.0, name="spearmanr")}
    rows = side_by_side.against_paper(ours, theirs).splitlines()[2:]
    assert len(rows) == 2
    assert rows[0].startswith("| STS-B | 80% | +1.00 |") and "| 8.0x | 0.25 |" in rows[0]   # grid task order
    assert rows[1].startswith("| MRPC | 50% | -1.00 |") and "| 2.5x | 0.33 |" in rows[1]
    noise = 100 * math.sqrt(0.805 * 0.195 / 400)
    assert f"| {noise:.2f} |" in rows[1]
    assert side_by_side.against_paper(ours, {}) == ""


def test_squad_scores_are_already_points():
    ours = {"squad/kprune/0.50/0": cell("squad", "kprune", 0.5, 55.3, 100.0, 700.0, name="f1", n=2000)}
    theirs = {"squad/kprune-paper/0.50/0": cell("squad", "kprune-paper", 0.5, 56.1, 400.0, 3500.0, name="f1")}
    row = side_by_side.against_paper(ours, theirs).splitlines()[2]
    bound = 100 * math.sqrt(0.557 * 0.443 / 2000)
    assert row.startswith(f"| SQuAD | 50% | -0.80 | {bound:.2f} | 4.0x | 0.20 |")
    assert "| f1 55.30 |" in side_by_side.table(ours, theirs)


def test_summary_counts_the_targets():
    ours = {"mrpc/kprune/0.50/0": cell("mrpc", "kprune", 0.5, 0.70, 100.0, 700.0),       # far below: named
            "sst2/kprune/0.50/0": cell("sst2", "kprune", 0.5, 0.85, 50.0, 1000.0)}       # 6x faster, memory 0.5
    theirs = {"mrpc/kprune-paper/0.50/0": cell("mrpc", "kprune-paper", 0.5, 0.80, 200.0, 2800.0),
              "sst2/kprune-paper/0.50/0": cell("sst2", "kprune-paper", 0.5, 0.85, 300.0, 2000.0)}
    text = side_by_side.summary(ours, theirs)
    assert "in 1 of 2; below by more in MRPC 50% (-10.00" in text and "(kprune, paper's recipe)" in text
    assert "met in 1 of 2)" in text and "0.25-0.50" in text and "2.0-6.0x" in text
    assert side_by_side.summary(ours, {}) == ""
    # this version's defaults are paired with the paper's code on their own
    defaults = {"mrpc/kprune-default/0.50/0": cell("mrpc", "kprune-default", 0.5, 0.81, 40.0, 700.0)}
    text = side_by_side.summary({**ours, **defaults}, theirs, "kprune-default")
    assert "Over the 1 paired cells (kprune, defaults, float32)" in text and "in 1 of 1." in text and "5.0-5.0x" in text


def test_our_side_takes_the_defaults_seed_0_cells_from_the_bf16_study(tmp_path):
    import json
    ours = {"mrpc/kprune/0.50/0": cell("mrpc", "kprune", 0.5, 0.80, 100.0, 700.0)}
    study = {"mrpc/kprune-default/0.50/0": cell("mrpc", "kprune-default", 0.5, 0.81, 90.0, 700.0),
             "mrpc/kprune-default-bf16/0.50/0": cell("mrpc", "kprune-default-bf16", 0.5, 0.81, 40.0, 700.0),
             "mrpc/kprune-default-bf16/0.50/1": dict(cell("mrpc", "kprune-default-bf16", 0.5, 0.7, 40.0, 700.0), seed=1),
             "mrpc/kprune-bf16/0.50/0": cell("mrpc", "kprune-bf16", 0.5, 0.80, 45.0, 700.0)}
    for name, cells in (("side_by_side.json", ours), ("grid-bf16.json", study)):
        (tmp_path / name).write_text(json.dumps({"cells": cells}))
    assert set(side_by_side.our_cells(tmp_path)) == {"mrpc/kprune/0.50/0", "mrpc/kprune-default/0.50/0",
                                                     "mrpc/kprune-default-bf16/0.50/0"}
    theirs = {"mrpc/kprune-paper/0.50/0": cell("mrpc", "kprune-paper", 0.5, 0.81, 200.0, 2100.0)}
    table = side_by_side.table(side_by_side.our_cells(tmp_path), theirs)
    assert "| MRPC | 50% | K-prune (kprune, defaults, bf16) | accuracy 81.00 | 50.0% | 40 | 700 |" in table
    assert "5.0-5.0x" in side_by_side.summary(side_by_side.our_cells(tmp_path), theirs, "kprune-default-bf16")
    # a defaults cell run for the side by side itself (side_by_side.json) wins over the study's
    ours["mrpc/kprune-default-bf16/0.50/0"] = cell("mrpc", "kprune-default-bf16", 0.5, 0.82, 25.0, 650.0)
    (tmp_path / "side_by_side.json").write_text(json.dumps({"cells": ours}))
    assert side_by_side.our_cells(tmp_path)["mrpc/kprune-default-bf16/0.50/0"]["prune_seconds"] == 25.0
    assert side_by_side.our_cells(tmp_path / "empty") == {}
