"""The benchmark suite on a tiny BERT: benchmarks/run_grid.py runs and records every planned cell, resumes
an interrupted grid without redoing finished cells and renders the report and plots;
benchmarks/finetune_recipe.py records dev scores and reuses cached checkpoints; the QQP split."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")
from transformers import BertModel  # noqa: E402

from fixtures_data import make_bert_tokenizer, tiny_bert_config  # noqa: E402
import finetune as ft  # noqa: E402  (examples/finetune.py)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import run_grid  # noqa: E402

WORDS = {1: ["good", "great", "fun"], 0: ["bad", "awful", "dull"]}
FILLER = ["the", "a", "film", "movie", "plot", "story", "was", "is", "very", "quite"]


def _write_sst2(path: Path, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["sentence\tlabel"]
    for i in range(rows):
        words = rng.sample(FILLER, rng.randint(3, 8)) + [rng.choice(WORDS[i % 2])]
        rng.shuffle(words)
        lines.append(f"{' '.join(words)}\t{i % 2}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def bench_dirs(tmp_path_factory):
    """A data folder laid out like ../shared/data (glue/SST-2) and a cache folder holding a fine-tuned
    tiny BERT at finetuned/sst2, as benchmarks/finetune_recipe.py leaves it."""
    root = tmp_path_factory.mktemp("bench")
    data_dir = root / "data"
    _write_sst2(data_dir / "glue" / "SST-2" / "train.tsv", 160, seed=0)
    _write_sst2(data_dir / "glue" / "SST-2" / "dev.tsv", 40, seed=1)
    base = root / "base"
    tokenizer = make_bert_tokenizer(base)
    torch.manual_seed(0)
    # 4 heads, FFN 64, positions for the runner's latency shapes (sequence length 128)
    BertModel(tiny_bert_config(tokenizer.vocab_size, hidden_size=32, num_attention_heads=4,
                               intermediate_size=64)).save_pretrained(str(base))
    tokenizer.save_pretrained(str(base))
    cache_dir = root / "cache"
    ft.finetune(base, "sst2", data_dir / "glue" / "SST-2", cache_dir / "finetuned" / "sst2", epochs=2,
                learning_rate=1e-2, batch_size=16, max_length=32, num_threads=1)
    return data_dir, cache_dir


def _run(data_dir: Path, cache_dir: Path, output: Path, *extra: str) -> int:
    return run_grid.main(["--data-dir", str(data_dir), "--cache-dir", str(cache_dir), "--tasks", "sst2",
                          "--methods", "kprune", "magnitude", "--reductions", "0.5", "--seeds", "0",
                          "--num-tokens", "400", "--output", str(output), "--no-finetune", *extra])


def test_grid_runs_every_cell_resumes_and_renders_the_report(bench_dirs, tmp_path):
    data_dir, cache_dir = bench_dirs
    output = tmp_path / "grid.json"
    assert _run(data_dir, cache_dir, output) == 0

    grid = json.loads(output.read_text())
    keys = {"sst2/kprune/0.50/0", "sst2/magnitude/0.50/0"}
    assert set(grid["cells"]) == keys
    record = ft.read_record(cache_dir / "finetuned" / "sst2")
    for key in keys:
        cell = grid["cells"][key]
        assert cell["flops_reduction"] >= 0.5 - 1e-9
        assert cell["flops_after"] <= 0.5 * cell["flops_before"] * (1 + 1e-9)
        assert cell["params_after"] < cell["params_before"]
        assert 0.0 <= cell["metric"] <= 1.0 and cell["metric_name"] == "accuracy"
        assert cell["metrics"]["num_examples"] == 40
        assert cell["unpruned_metric"] == record["dev_metrics"]["accuracy"]
        assert 250 <= cell["num_tokens"] <= 400 + 64     # the sampler's budget, one sequence over at most
        assert cell["num_tokens_requested"] == 400
        assert cell["peak_rss_mb"] > 0 and cell["prune_seconds"] > 0
        for shape in ("b32_s128", "b1_s128"):
            timing = cell["latency"][shape]
            assert timing["pruned_s"] > 0 and timing["unpruned_s"] > 0
            assert timing["speedup"] == pytest.approx(timing["unpruned_s"] / timing["pruned_s"])
    assert grid["baselines"]["sst2"]["metric"] == record["dev_metrics"]["accuracy"]
    assert grid["meta"]["num_tokens"] == 400

    report = output.with_suffix(".md").read_text()
    assert "python benchmarks/run_grid.py --num-tokens 400" in report
    assert (tmp_path / "grid-plots" / "sst2.png").stat().st_size > 1000
    assert not (tmp_path / "plots").exists()
    # the K-prune cell's accuracy, as the report prints it (x100, two decimals)
    assert f"{100 * grid['cells']['sst2/kprune/0.50/0']['metric']:.2f}" in report

    # Resume: a finished cell is not redone; a cell missing from grid.json is run again.
    finished = {k: c["finished_at"] for k, c in grid["cells"].items()}
    magnitude = grid["cells"]["sst2/magnitude/0.50/0"]
    del grid["cells"]["sst2/magnitude/0.50/0"]
    output.write_text(json.dumps(grid))
    assert _run(data_dir, cache_dir, output, "--no-report") == 0
    again = json.loads(output.read_text())["cells"]
    assert set(again) == keys
    assert again["sst2/kprune/0.50/0"]["finished_at"] == finished["sst2/kprune/0.50/0"]
    assert again["sst2/kprune/0.50/0"]["metric"] == grid["cells"]["sst2/kprune/0.50/0"]["metric"]
    assert again["sst2/magnitude/0.50/0"]["finished_at"] >= finished["sst2/magnitude/0.50/0"]
    # magnitude pruning needs no data and no randomness: the re-run cell keeps the same units and scores
    for field in ("heads_kept", "neurons_kept", "metric", "flops_after"):
        assert again["sst2/magnitude/0.50/0"][field] == magnitude[field], field

    # A re-tuned checkpoint: cells that ran on another one move to "superseded" and are run again.
    stale = json.loads(output.read_text())
    assert stale["cells"]["sst2/kprune/0.50/0"]["checkpoint_dev_metrics"] == record["dev_metrics"]
    stale["cells"]["sst2/kprune/0.50/0"]["checkpoint_dev_metrics"] = {"accuracy": 0.123}
    output.write_text(json.dumps(stale))
    assert _run(data_dir, cache_dir, output, "--no-report") == 0
    rerun = json.loads(output.read_text())
    assert rerun["superseded"]["sst2/kprune/0.50/0"]["checkpoint_dev_metrics"] == {"accuracy": 0.123}
    assert rerun["cells"]["sst2/kprune/0.50/0"]["checkpoint_dev_metrics"] == record["dev_metrics"]
    assert rerun["cells"]["sst2/kprune/0.50/0"]["finished_at"] >= finished["sst2/kprune/0.50/0"]
    assert rerun["cells"]["sst2/magnitude/0.50/0"] == again["sst2/magnitude/0.50/0"]


def test_cells_without_a_checkpoint_stamp_follow_the_task_baseline():
    grid = {"cells": {"mrpc/kprune/0.50/0": {"task": "mrpc"}, "sst2/kprune/0.50/0": {"task": "sst2"}},
            "baselines": {"mrpc": {"dev_metrics": {"accuracy": 0.77}}, "sst2": {"dev_metrics": {"accuracy": 0.86}}}}
    assert run_grid.retire_stale_cells(grid, "sst2", {"accuracy": 0.86}) == []
    assert run_grid.retire_stale_cells(grid, "mrpc", {"accuracy": 0.84}) == ["mrpc/kprune/0.50/0"]
    assert set(grid["cells"]) == {"sst2/kprune/0.50/0"} and "mrpc" not in grid["baselines"]
    assert grid["superseded"]["mrpc/kprune/0.50/0"]["checkpoint_dev_metrics"] == {"accuracy": 0.77}


def test_list_shows_done_and_missing_cells(bench_dirs, tmp_path, capsys):
    data_dir, cache_dir = bench_dirs
    output = tmp_path / "grid.json"
    output.write_text(json.dumps({"cells": {"sst2/kprune/0.50/0": {"num_tokens_requested": 400}}}))
    assert _run(data_dir, cache_dir, output, "--list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert "sst2/kprune/0.50/0 done" in lines
    assert "sst2/magnitude/0.50/0 missing" in lines


def test_task_without_checkpoint_is_skipped_with_no_finetune(bench_dirs, tmp_path):
    data_dir, _ = bench_dirs
    output = tmp_path / "grid.json"
    assert _run(data_dir, tmp_path / "empty-cache", output, "--no-report") == 0
    assert json.loads(output.read_text())["cells"] == {}


def test_report_tables_a_larger_sample_beside_the_grid(bench_dirs, tmp_path):
    import report

    data_dir, cache_dir = bench_dirs
    small, large = tmp_path / "grid.json", tmp_path / "large.json"
    for output, tokens in ((small, "300"), (large, "900")):
        assert run_grid.main(["--data-dir", str(data_dir), "--cache-dir", str(cache_dir), "--tasks", "sst2",
                              "--methods", "kprune", "--reductions", "0.6", "--seeds", "0", "--num-tokens", tokens,
                              "--output", str(output), "--no-finetune", "--no-report"]) == 0
    cell_small = json.loads(small.read_text())["cells"]["sst2/kprune/0.60/0"]
    cell_large = json.loads(large.read_text())["cells"]["sst2/kprune/0.60/0"]
    assert cell_large["num_tokens"] > 2 * cell_small["num_tokens"]
    results = tmp_path / "RESULTS.md"
    assert report.main(["--grid", str(small), "--output", str(results), "--plots", str(tmp_path / "plots"),
                        "--larger-sample", str(large), "--no-discussion"]) == 0
    text = results.read_text()
    assert "## A larger sample: 900 tokens" in text
    row = next(line for line in text.splitlines() if line.startswith("| SST-2 | kprune | 60% |"))
    assert f"| {100 * cell_small['metric']:.2f} | {100 * cell_large['metric']:.2f} |" in row
    assert "--tasks sst2 --methods kprune --reductions 0.6 --seeds 0" in text
    assert report.main(["--grid", str(small), "--output", str(results), "--plots", str(tmp_path / "plots"),
                        "--larger-sample", str(large), "--no-discussion", "--no-larger-sample"]) == 0
    assert "A larger sample" not in results.read_text()


def test_finetune_recipe_records_dev_scores_and_reuses_the_checkpoint(bench_dirs, tmp_path, monkeypatch):
    import finetune_recipe

    data_dir, cache_dir = bench_dirs
    base = cache_dir.parent / "base"
    monkeypatch.setattr(finetune_recipe, "model_dir", lambda: base)
    monkeypatch.setitem(finetune_recipe.RECIPES, "sst2", {
        "data": "glue/SST-2", "settings": dict(epochs=1, learning_rate=1e-2, batch_size=16, max_length=32)})
    cache, results = tmp_path / "cache", tmp_path / "finetune.json"
    args = ["--data-dir", str(data_dir), "--cache-dir", str(cache), "--tasks", "sst2", "--results", str(results)]
    assert finetune_recipe.main(args) == 0
    weights = cache / "finetuned" / "sst2" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    entry = json.loads(results.read_text())["tasks"]["sst2"]
    record = ft.read_record(cache / "finetuned" / "sst2")
    assert entry["dev_metrics"] == record["dev_metrics"] and 0.0 <= entry["dev_metrics"]["accuracy"] <= 1.0
    assert entry["num_train_examples"] == 160 and entry["settings"]["max_length"] == 32

    assert finetune_recipe.main(args) == 0            # same settings: reused, not trained again
    assert weights.stat().st_mtime_ns == stamp
    # other settings: trained again
    monkeypatch.setitem(finetune_recipe.RECIPES, "sst2", {
        "data": "glue/SST-2", "settings": dict(epochs=1, learning_rate=5e-3, batch_size=16, max_length=32)})
    assert finetune_recipe.main(args) == 0
    assert weights.stat().st_mtime_ns != stamp
    assert json.loads(results.read_text())["tasks"]["sst2"]["settings"]["learning_rate"] == 5e-3


def test_prepare_qqp_drops_malformed_rows_and_holds_out_the_last_rows(tmp_path, monkeypatch):
    import finetune_recipe

    monkeypatch.setattr(finetune_recipe, "QQP_DEV_ROWS", 4)
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
    good = [f"{i}\t{2 * i}\t{2 * i + 1}\twhat is {i}?\twho is {i}?\t{i % 2}" for i in range(12)]
    source = tmp_path / "data" / "glue" / "QQP" / "train_subset.tsv"
    source.parent.mkdir(parents=True)
    source.write_text("\n".join([header, "broken row\twith three\tfields"] + good) + "\n")
    target = finetune_recipe.prepare_qqp(tmp_path / "data", tmp_path / "cache")
    assert target == tmp_path / "cache" / "data" / "qqp"
    train = (target / "train.tsv").read_text().splitlines()
    dev = (target / "dev.tsv").read_text().splitlines()
    assert train == [header] + good[:8] and dev == [header] + good[8:]
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]    # no staging left
    stamp = (target / "train.tsv").stat().st_mtime_ns
    assert finetune_recipe.prepare_qqp(tmp_path / "data", tmp_path / "cache") == target   # written once
    assert (target / "train.tsv").stat().st_mtime_ns == stamp
