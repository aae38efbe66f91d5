import json
import subprocess
import sys

import pytest
import torch

from conftest import tiny_config
from fixtures_data import make_bert_tokenizer, sst2_rows, write_tsv
from kprune.cli import main


@pytest.fixture
def workspace(tmp_path):
    import transformers

    tokenizer = make_bert_tokenizer(tmp_path / "tok")
    config = tiny_config("bert", "classification")
    config.vocab_size = len(tokenizer)
    config.num_labels = 2
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    data = tmp_path / "SST-2"
    write_tsv(data / "train.tsv", sst2_rows(40))
    write_tsv(data / "dev.tsv", sst2_rows(12))
    return tmp_path


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_prune_evaluate_info(workspace, capsys):
    out = workspace / "pruned"
    code, stdout, _ = run(capsys, "prune", "--model", str(workspace / "model"), "--task", "sst2", "--data",
                          str(workspace / "SST-2"), "--flops-reduction", "0.5", "--output", str(out),
                          "--num-tokens", "200", "--batch-size", "8", "--quiet")
    assert code == 0
    summary = json.loads(stdout)
    report = json.loads((out / "report.json").read_text())
    assert report["flops_reduction"] >= 0.5 and summary["flops_reduction"] == report["flops_reduction"]
    assert report["num_tokens"] >= 200 and set(report["seconds"]) >= {"measure", "search", "tune", "total", "sampling"}
    assert (out / "tokenizer.json").exists() or (out / "vocab.txt").exists()
    code, stdout, _ = run(capsys, "evaluate", "--model", str(out), "--task", "sst2", "--data", str(workspace / "SST-2"))
    assert code == 0 and 0.0 <= json.loads(stdout)["accuracy"] <= 1.0
    code, stdout, _ = run(capsys, "info", "--model", str(out))
    info = json.loads(stdout)
    assert code == 0 and info["heads_kept"] == report["heads_kept"] and info["architecture"] == "bert"


@pytest.mark.parametrize("argv, message", [
    (["--task", "sst9"], "sst9"),
    (["--flops-reduction", "1.5"], "flops_reduction"),
    (["--task", "mnli"], "3 label"),
    (["--task", "stsb"], "1 label"),
    (["--num-tokens", "0"], "num-tokens"),
])
def test_bad_input_is_an_error_and_writes_nothing(workspace, capsys, argv, message):
    out = workspace / "pruned"
    base = {"--model": str(workspace / "model"), "--task": "sst2", "--data": str(workspace / "SST-2"),
            "--flops-reduction": "0.5", "--output": str(out), "--num-tokens": "100"}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    args = ["prune", "--quiet"] + [item for pair in base.items() for item in pair]
    code, _, err = run(capsys, *args)
    assert code == 2 and message in err
    assert not out.exists()
    assert not [p for p in workspace.iterdir() if p.name.startswith(".pruned")]


def test_empty_data_is_an_error(workspace, capsys, tmp_path):
    empty = tmp_path / "empty"
    write_tsv(empty / "train.tsv", [["sentence", "label"]])
    code, _, err = run(capsys, "prune", "--model", str(workspace / "model"), "--task", "sst2", "--data", str(empty),
                       "--output", str(tmp_path / "o"), "--quiet")
    assert code == 2 and "error" in err and not (tmp_path / "o").exists()


def test_console_script_help():
    done = subprocess.run([sys.executable, "-m", "kprune.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "prune" in done.stdout
