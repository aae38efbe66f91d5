"""benchmarks/bench_floor.py on a tiny fine-tuned-looking BERT and a tiny SST-2 folder: one command times a
pass and a run, and the results file says what the table says."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from transformers import BertForSequenceClassification  # noqa: E402

from fixtures_data import make_bert_tokenizer, sst2_rows, tiny_bert_config, write_tsv  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_floor  # noqa: E402


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("floor")
    model_dir = root / "sst2"
    tokenizer = make_bert_tokenizer(model_dir)
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size, num_hidden_layers=3)).save_pretrained(model_dir)
    tokenizer.save_pretrained(str(model_dir))
    data_dir = root / "SST-2"
    write_tsv(data_dir / "train.tsv", sst2_rows(60))
    return model_dir, data_dir


def run_case(dirs, output, *flags: str) -> dict:
    """bench_floor's one command on the tiny case (300 tokens, 60%), results to ``output`` (None: not recorded)."""
    model_dir, data_dir = dirs
    where = ["--no-record"] if output is None else ["--output", str(output)]
    return bench_floor.main(["--model", str(model_dir), "--data", str(data_dir), "--num-tokens", "300",
                             "--flops-reduction", "0.6", *where, *flags])


def test_one_command_times_pass_and_run_and_records_them(dirs, tmp_path, capsys):
    output = tmp_path / "floor.json"
    entry = run_case(dirs, output)
    stored = json.loads(output.read_text())["runs"]
    assert stored == [entry]
    assert entry["num_layers"] == 3 and entry["floor_passes"] == 3.5
    assert entry["num_tokens"] >= 300 and entry["flops_reduction"] >= 0.6 - 1e-9
    assert entry["pass_seconds"] > 0 and entry["run_seconds"] > 0
    rounding = 0.0005 / entry["pass_seconds"] + 0.0005 / entry["run_seconds"]   # seconds are kept to 3 decimals
    assert entry["ratio_to_floor"] == pytest.approx(entry["run_seconds"] / (3.5 * entry["pass_seconds"]),
                                                    rel=2 * rounding + 1e-3)
    assert {"measure", "tune", "advance", "search", "total"} <= set(entry["phase_seconds"])
    printed = capsys.readouterr().out
    assert f"{entry['ratio_to_floor']:.3f}x" in printed and "run phases" in printed
    # a second run of the same case replaces the first rather than piling up
    run_case(dirs, output)
    assert len(json.loads(output.read_text())["runs"]) == 1


def test_the_timed_pass_leaves_the_model_unchanged(dirs):
    import kprune

    model_dir, data_dir = dirs
    model, samples = bench_floor.load(str(model_dir), str(data_dir), "sst2", 200, 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wall, cpu = bench_floor.time_pass(model, samples, "classification", kprune.KPruneConfig(progress=False))
    assert wall > 0 and cpu > 0
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_bf16_case_times_its_pass_in_bf16_and_is_its_own_entry(dirs, tmp_path, monkeypatch):
    import kprune.knowledge as knowledge

    output = tmp_path / "floor.json"
    seen = []
    real_op = knowledge.ops.accumulate_group_sums

    def spy(act, grad, *args):
        seen.append(act.dtype)
        return real_op(act, grad, *args)

    monkeypatch.setattr(knowledge.ops, "accumulate_group_sums", spy)
    for dtype in ("float32", "bfloat16"):
        seen.clear()
        run_case(dirs, output, "--measure-dtype", dtype)
        assert (torch.bfloat16 in seen) == (dtype == "bfloat16")
    runs = json.loads(output.read_text())["runs"]
    assert len(runs) == 2 and runs[1]["case"].endswith(", bfloat16") and "bfloat16" not in runs[0]["case"]


def test_gemm_account_counts_each_product_by_dtype_against_2mkn():
    import gemm_account

    a32, b32 = torch.randn(256, 512), torch.randn(512, 384)   # 0.1 GFLOP a product
    bias = torch.randn(384)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    batched = torch.randn(8, 64, 128), torch.randn(8, 128, 64)

    def run():
        torch.mm(a32, b32)
        torch.addmm(bias, a32, b32)
        torch.mm(a16, b16)
        torch.bmm(*batched)

    got = gemm_account.profile_run(run)
    rows = got["gemm"]
    assert len(rows) == 2   # float32 (as torch names it: "float") and bfloat16
    bf16 = next(row for dtype, row in rows.items() if "bfloat16" in dtype.lower())
    fp32 = next(row for dtype, row in rows.items() if "bfloat16" not in dtype.lower())
    assert fp32["count"] == 3 and bf16["count"] == 1
    assert fp32["gflop"] == pytest.approx(round((2 * 2 * 256 * 512 * 384 + 2 * 8 * 64 * 128 * 64) / 1e9, 3))
    assert bf16["gflop"] == pytest.approx(round(2 * 256 * 512 * 384 / 1e9, 3))
    assert got["gemm_seconds"] == pytest.approx(sum(r["seconds"] for r in rows.values()), abs=2e-4)
    assert 0 < got["gemm_seconds"] <= got["op_self_seconds"] + 1e-3
    # the formulas themselves, on each event's shape layout
    assert gemm_account.gemm_flops("aten::mm", [[4, 5], [5, 6]]) == 2 * 4 * 5 * 6
    assert gemm_account.gemm_flops("aten::addmm", [[6], [4, 5], [5, 6], [], []]) == 2 * 4 * 5 * 6
    assert gemm_account.gemm_flops("aten::baddbmm", [[2, 4, 6], [2, 4, 5], [2, 5, 6], [], []]) == 2 * 2 * 4 * 5 * 6
    assert gemm_account.gemm_flops("mkldnn::_linear_pointwise", [[3, 4, 5], [6, 5], [6]]) == 2 * 12 * 5 * 6
    with pytest.raises(ValueError, match="aten::add is not a GEMM event"):
        gemm_account.gemm_flops("aten::add", [[1], [1]])


def test_gemm_account_flag_records_the_run_s_gemms(dirs, tmp_path, capsys):
    output = tmp_path / "floor.json"
    entry = run_case(dirs, output, "--gemm-account")
    gemm = entry["gemm_account"]
    assert json.loads(output.read_text())["runs"][0]["gemm_account"] == gemm
    assert gemm["gemm"] and all(row["count"] > 0 and row["gflop"] >= 0 for row in gemm["gemm"].values())
    assert 0 < gemm["gemm_seconds"] <= gemm["op_self_seconds"] + 1e-3
    assert "GEMMs of a profiled run" in capsys.readouterr().out


def test_thin_copy_keeps_layers_heads_and_class_with_four_dimensions_per_head(dirs):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(dirs[0]).eval()
    thin = bench_floor.thin_copy(model)
    assert type(thin) is type(model)
    config, original = thin.config, model.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.vocab_size, config.num_labels) == \
        (original.num_hidden_layers, original.num_attention_heads, original.vocab_size, original.num_labels)
    assert config.hidden_size == 4 * original.num_attention_heads and config.intermediate_size == 4 * config.hidden_size
    assert thin.bert.encoder.layer[0].intermediate.dense.weight.shape == (config.intermediate_size, config.hidden_size)
    assert original.hidden_size != config.hidden_size   # the model itself is left as it was
    assert torch.equal(bench_floor.thin_copy(model).classifier.weight, thin.classifier.weight)   # seeded


def test_thin_account_flag_records_the_thin_run(dirs, tmp_path, capsys):
    output = tmp_path / "floor.json"
    entry = run_case(dirs, output, "--thin-account")
    thin = entry["thin_run"]
    assert json.loads(output.read_text())["runs"][0]["thin_run"] == thin
    assert thin["hidden_size"] == 8 and thin["intermediate_size"] == 32   # 2 heads of 4
    assert thin["seconds"] > 0 and set(thin["phase_seconds"]) >= {"measure", "tune", "total"}
    assert "gemm_seconds" not in thin   # only with --gemm-account
    assert "the same run on a thin copy (hidden 8, FFN 32)" in capsys.readouterr().out
    both = run_case(dirs, None, "--thin-account", "--gemm-account")
    assert 0 < both["thin_run"]["gemm_seconds"]
    assert "s of it its GEMMs" in capsys.readouterr().out
