"""The scale study (benchmarks/bench_scale.py): the cost-model fits recover known coefficients, the
profile categories attribute the Gram's GEMMs to least squares, and a smoke run on a tiny BERT records
per-step timings that add up to kprune's own total, resumes without re-running and draws the plot."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("matplotlib")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_scale  # noqa: E402
import scale_analysis as sa  # noqa: E402

TRUE = {"a": 2e-4, "b_att": 4e-5, "b_ffn": 2.5e-4, "c": 1e-4}


def synthetic_run(layers: int, tokens: int, hidden: int = 768) -> dict:
    """A record whose step CPU seconds follow the cost model exactly (written out step by step)."""
    steps = []
    for k in range(2 * layers):
        b = TRUE["b_att"] if k % 2 == 0 else TRUE["b_ffn"]
        per_sublayer = TRUE["c"] if k == 0 else TRUE["a"]
        steps.append(tokens * (per_sublayer * (2 * layers - k) + b))
    return {"key": f"base-L{layers}-T{tokens}", "width": "base", "hidden": hidden, "layers": layers,
            "num_tokens": tokens, "step_cpu_seconds": steps,
            "peak_rss_mb": 300 + 0.02 * tokens + 60 * layers}


def test_time_fit_recovers_the_cost_model_and_predicts_a_run():
    runs = [synthetic_run(2, 1000), synthetic_run(4, 1000), synthetic_run(2, 5000)]
    fit = sa.fit_time(runs)
    for name, value in TRUE.items():
        assert fit[name] == pytest.approx(value, rel=1e-9)
    deep = synthetic_run(12, 100_000)
    assert sa.predict_cpu(fit, 12, 100_000) == pytest.approx(sum(deep["step_cpu_seconds"]), rel=1e-9)


def test_time_fit_needs_steps_of_several_depths_and_kinds():
    assert sa.fit_time([synthetic_run(1, 1000)]) is None   # one step after k = 0: a and the b are not separable


def test_memory_fit_recovers_a_linear_model():
    runs = [synthetic_run(2, 1000), synthetic_run(4, 1000), synthetic_run(2, 5000)]
    fit = sa.fit_memory(runs)
    assert (fit["m0"], fit["mT"], fit["mL"]) == pytest.approx((300, 0.02, 60), rel=1e-6)
    assert sa.fit_memory(runs[:2]) is None   # one sample size only


def test_extrapolations_say_which_targets_were_measured():
    data = {"runs": {r["key"]: r for r in [synthetic_run(2, 1000), synthetic_run(4, 1000), synthetic_run(12, 100_000)]}}
    (base,) = [e for e in sa.extrapolations(data) if e["key"] == "base-L12-T100000"]
    assert base["measured"] and base["step_mean"] == pytest.approx(base["cpu_seconds"] / 24)
    assert all(e["key"].startswith("base") for e in sa.extrapolations(data))   # no large-width runs, no large fit


def test_profile_categories_put_the_grams_gemms_under_least_squares():
    def event(name, micros, parent=None):
        return SimpleNamespace(name=name, self_cpu_time_total=micros, cpu_parent=parent)

    gram = event("kprune::gram_accumulate", 1e6)
    events = [gram, event("aten::mm", 3e6, gram), event("aten::mm", 5e6), event("aten::softmax", 2e6),
              event("kprune::masked_ffn", 1e6), event("aten::add", 1e6)]
    seconds = sa.categorise(events, wall=15.0)
    assert seconds["least squares (Gram + solve)"] == 4.0
    assert seconds["GEMM"] == 5.0
    assert seconds["attention (softmax / SDPA)"] == 2.0
    assert seconds["other kprune kernels"] == 1.0
    assert seconds["outside operators (Python, autograd, dispatch)"] == 2.0


@pytest.mark.parametrize("key", ["base-L0-T10000", "huge-L2-T10000", "base-L2", "base-L2-T10"])
def test_bad_configuration_names_are_refused(key):
    with pytest.raises(SystemExit, match="bad configuration"):
        bench_scale.parse_key(key)


def test_smoke_run_records_steps_resumes_and_plots(tmp_path, capsys):
    out, png = tmp_path / "scale.json", tmp_path / "scale.png"
    args = ["--only", "tiny-L1-T300", "tiny-L2-T300", "--profile", "tiny-L1-T300", "--output", str(out),
            "--plot", str(png)]
    assert bench_scale.main(args) == 0
    data = json.loads(out.read_text())
    for key, layers in (("tiny-L1-T300", 1), ("tiny-L2-T300", 2)):
        r = data["runs"][key]
        assert r["layers"] == layers and r["num_tokens"] >= 300 and r["threads"] == 1
        assert len(r["step_seconds"]) == len(r["step_cpu_seconds"]) == len(r["step_phase_seconds"]) == 2 * layers
        # the steps and the setup make up kprune's own total (the wall clock between steps misses only the loop)
        assert sum(r["step_seconds"]) + r["phase_seconds"]["setup"] == pytest.approx(r["phase_seconds"]["total"],
                                                                                      abs=0.05)
        assert r["flops_reduction"] == pytest.approx(0.5, abs=0.1)   # 2 heads: coarse units
        assert r["peak_rss_mb"] >= r["rss_before_mb"] > 0
    profile = data["profile"]
    assert profile["key"] == "tiny-L1-T300" and sum(profile["categories"].values()) == pytest.approx(
        profile["wall_seconds"], abs=0.05)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| tiny-L2-T300 | 2 | 32 |" in printed
    bench_scale.main(args[:3] + args[5:])   # the same runs again, without the profile: nothing re-runs
    assert json.loads(out.read_text())["runs"] == data["runs"]
    assert capsys.readouterr().out.count("already recorded, skipped") == 2


def test_update_results_replaces_only_the_marked_part(tmp_path):
    section = tmp_path / "scale.md"
    section.write_text(f"## Scale study\nprose\n{bench_scale.BEGIN}\nold table\n{bench_scale.END}\nmore prose\n")
    bench_scale.update_results("new table", [section])
    assert section.read_text() == (f"## Scale study\nprose\n{bench_scale.BEGIN}\nnew table\n{bench_scale.END}\n"
                                   "more prose\n")
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        bench_scale.update_results("x", [bare])


def test_held_out_depth_predicts_the_deepest_run_from_the_shallower():
    runs = [synthetic_run(2, 1000), synthetic_run(2, 3000), synthetic_run(6, 1000)]
    ((key, predicted, measured),) = sa.held_out_depth(runs)
    assert key == "base-L6-T1000" and predicted == pytest.approx(measured, rel=1e-9)
    assert sa.held_out_depth([synthetic_run(2, 1000)]) == []   # nothing shallower to fit on
