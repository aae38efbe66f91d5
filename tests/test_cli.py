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
    code, stdout, _ = run(capsys, "info", "--model", str(out), "--json")
    info = json.loads(stdout)
    assert code == 0 and info["heads_kept"] == report["heads_kept"] and info["architecture"] == "bert"


@pytest.mark.parametrize("argv, message", [
    (["--task", "sst9"], "sst9"),
    (["--flops-reduction", "1.5"], "--flops-reduction 1.5 must be"),
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


@pytest.mark.parametrize("task", ["squad", "stsb"])
def test_prune_qa_and_regression_tasks(tmp_path, capsys, task):
    import transformers

    from fixtures_data import write_squad

    tokenizer = make_bert_tokenizer(tmp_path / "tok")
    head = "qa" if task == "squad" else "regression"
    config = tiny_config("bert", head)
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    cls = transformers.BertForQuestionAnswering if head == "qa" else transformers.BertForSequenceClassification
    cls(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    if task == "squad":
        data = write_squad(tmp_path / "squad" / "train-v1.1.json")
        write_squad(tmp_path / "squad" / "dev-v1.1.json")
        data = data.parent
    else:
        data = tmp_path / "STS-B"
        rows = [["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
                 "score"]]
        rows += [[str(i), "g", "f", "y", "o", "s", "s", "the film was good", "a fun movie", f"{i % 5}.0"]
                 for i in range(12)]
        write_tsv(data / "train.tsv", rows)
        write_tsv(data / "dev.tsv", rows)
    out = tmp_path / "pruned"
    code, stdout, err = run(capsys, "prune", "--model", str(tmp_path / "model"), "--task", task, "--data", str(data),
                            "--flops-reduction", "0.7", "--output", str(out), "--num-tokens", "300", "--quiet")
    assert code == 0, err
    assert json.loads(stdout)["flops_reduction"] >= 0.7
    code, stdout, err = run(capsys, "evaluate", "--model", str(out), "--task", task, "--data", str(data))
    metrics = json.loads(stdout)
    assert code == 0 and (("f1" in metrics and "exact_match" in metrics) if task == "squad" else "pearson" in metrics)


def test_same_seed_same_model(workspace, capsys):
    outputs = []
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        out = workspace / name
        code, _, err = run(capsys, "prune", "--model", str(workspace / "model"), "--task", "sst2", "--data",
                           str(workspace / "SST-2"), "--output", str(out), "--num-tokens", "60", "--seed", seed,
                           "--quiet")
        assert code == 0, err
        outputs.append(json.loads((out / "report.json").read_text()))
    assert (workspace / "a" / "model.safetensors").read_bytes() == (workspace / "b" / "model.safetensors").read_bytes()
    assert outputs[0]["num_tokens"] == outputs[1]["num_tokens"]
    assert (workspace / "a" / "model.safetensors").read_bytes() != (workspace / "c" / "model.safetensors").read_bytes()
