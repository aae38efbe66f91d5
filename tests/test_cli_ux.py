"""The command line as a new user meets it: help with defaults, their own CSV and head, readable info,
clear errors, --quiet, Ctrl-C."""
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from fixtures_data import SENTENCES, make_bert_tokenizer, tiny_bert_config
from kprune import console
from kprune.cli import build_parser, main
from kprune.data import load_examples, sample_features
from kprune.errors import ConfigError, DataError
from kprune.tasks import custom_task, get_task, with_columns

REPO = Path(__file__).resolve().parent.parent


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def save_model(folder: Path, num_labels: int, layers: int = 2, id2label=None, regression=False):
    import transformers

    tokenizer = make_bert_tokenizer(folder / "tok")
    config = tiny_bert_config(len(tokenizer), num_labels, num_hidden_layers=layers)
    if regression:
        config.problem_type = "regression"
    if id2label:
        config.id2label = dict(enumerate(id2label))
        config.label2id = {name: i for i, name in enumerate(id2label)}
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return folder / "model"


def write_reviews(path: Path, rows: int, labels) -> Path:
    """A CSV with columns of the user's own names: review, title, stars."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "title", "review", "stars"])
        for i in range(rows):
            writer.writerow([i, f"title {i % 7}", SENTENCES[i % len(SENTENCES)], labels[i % len(labels)]])
    return path


def env_for_subprocess():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "python"), str(REPO)]), OMP_NUM_THREADS="1")
    env.pop("KPRUNE_THREADS", None)
    return env


# -- --help ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["prune", "evaluate", "info"])
def test_help_gives_every_option_a_meaning_and_its_default(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    formatter = console.HelpFormatter("kprune")
    for action in sub._actions:
        if action.dest == "help":
            continue
        text = formatter._get_help_string(action)
        assert len(action.help or "") > 8, action.option_strings           # a meaning
        assert "(required)" in text or "(default" in text, action.option_strings
    rendered = " ".join(sub.format_help().split())
    if command == "prune":
        assert "(default: 100000)" in rendered and "(default: 0.5)" in rendered and "KPRUNE_THREADS" in rendered
        assert "--text-column" in rendered and "--num-labels" in rendered


def test_errors_name_cli_flags():
    names = console.flag_names(build_parser())
    assert console.cli_words("num_tokens=0 must be positive", names) == "--num-tokens 0 must be positive"
    assert console.cli_words("flops_reduction=1.5 must be", names) == "--flops-reduction 1.5 must be"
    assert console.cli_words("the model has max_length 7", names) == "the model has --max-length 7"
    assert console.cli_words("the model's head and the task", names) == "the model's head and the task"


def test_model_folder_without_config_is_not_a_model_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "info", "--model", tmp_path / "empty")
    assert code == 2 and "not a model folder" in err and "save_pruned" not in err


# -- your own data ---------------------------------------------------------------------------------

def test_column_flags_pick_the_users_columns(tmp_path):
    data = write_reviews(tmp_path / "reviews.csv", 9, ["0", "1", "2"])
    spec = with_columns(custom_task("classification", 3), text_column="review", label_column="stars")
    examples = load_examples(spec, data)
    assert [e.texts for e in examples] == [(SENTENCES[i % len(SENTENCES)],) for i in range(9)]
    assert [e.label for e in examples] == [i % 3 for i in range(9)]
    pair = with_columns(spec, text_pair_column="title")
    assert [e.texts[1] for e in load_examples(pair, data)] == [f"title {i % 7}" for i in range(9)]
    tokenizer = make_bert_tokenizer(tmp_path / "tok")
    features = sample_features(pair, data, tokenizer, num_tokens=10_000)
    assert all(int((f["input_ids"] == tokenizer.sep_token_id).sum()) == 2 for f in features)
    with pytest.raises(DataError, match="'headline'"):
        load_examples(with_columns(spec, text_column="headline"), data)
    with pytest.raises(ConfigError, match="text_pair_column"):
        with_columns(get_task("sst2"), text_pair_column="title")


def test_generic_task_reads_a_pair_when_present(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"sentence1": "a cat", "sentence2": "a dog", "label": 1}) + "\n"
                            for _ in range(3)))
    examples = load_examples(custom_task("classification", 2), data)
    assert [e.texts for e in examples] == [("a cat", "a dog")] * 3


def test_custom_task_checks_its_arguments():
    with pytest.raises(ConfigError, match="num_labels=1"):
        custom_task("classification", 1)
    with pytest.raises(ConfigError, match="kind='ner'"):
        custom_task("ner")
    assert custom_task("regression").num_labels == 1


def test_prune_and_evaluate_an_n_class_head_on_a_csv(tmp_path, capsys):
    model = save_model(tmp_path, 4, id2label=["poor", "fair", "good", "great"])
    data = write_reviews(tmp_path / "reviews" / "train.csv", 40, ["poor", "fair", "good", "great"])
    write_reviews(tmp_path / "reviews" / "dev.csv", 12, ["0", "1", "2", "3"])
    flags = ["--task", "classification", "--text-column", "review", "--label-column", "stars"]
    out = tmp_path / "pruned"
    code, stdout, err = run(capsys, "prune", "--model", model, "--data", data, "--output", out, "--num-tokens",
                            "150", "--flops-reduction", "0.4", "--quiet", *flags)
    assert code == 0, err
    assert json.loads(stdout)["flops_reduction"] >= 0.4 and len(json.loads((out / "config.json").read_text())["id2label"]) == 4
    code, stdout, err = run(capsys, "evaluate", "--model", out, "--data", tmp_path / "reviews", "--quiet", *flags)
    metrics = json.loads(stdout)
    assert code == 0 and metrics["num_examples"] == 12 and 0 <= metrics["accuracy"] <= 1
    code, _, err = run(capsys, "prune", "--model", model, "--data", data, "--output", tmp_path / "o2", "--quiet",
                       "--num-labels", "3", *flags)
    assert code == 2 and "--num-labels" in err and not (tmp_path / "o2").exists()


def test_prune_a_regression_head_on_a_jsonl(tmp_path, capsys):
    model = save_model(tmp_path, 1, regression=True)
    data = tmp_path / "scores.jsonl"
    data.write_text("".join(json.dumps({"text": SENTENCES[i % len(SENTENCES)], "score": i / 7}) + "\n"
                            for i in range(30)))
    code, stdout, err = run(capsys, "prune", "--model", model, "--task", "regression", "--data", data,
                            "--output", tmp_path / "out", "--num-tokens", "100", "--quiet")
    assert code == 0, err
    assert json.loads(stdout)["flops_reduction"] >= 0.5


def test_small_sample_warns_at_the_normal_level(tmp_path, capsys):
    model = save_model(tmp_path, 2)
    data = write_reviews(tmp_path / "r.csv", 10, ["0", "1"])
    code, _, err = run(capsys, "prune", "--model", model, "--task", "classification", "--text-column", "review",
                       "--data", data, "--output", tmp_path / "out", "--num-tokens", "100000")
    assert code == 0
    assert "less than half of --num-tokens 100000" in err
    code, _, err = run(capsys, "prune", "--model", model, "--task", "classification", "--text-column", "review",
                       "--data", data, "--output", tmp_path / "out2", "--num-tokens", "100000", "--quiet")
    assert code == 0 and "less than half" not in err


# -- info ------------------------------------------------------------------------------------------

def test_info_table_gives_the_reduction_at_the_pruning_length(tmp_path, capsys):
    model = save_model(tmp_path, 2)
    data = write_reviews(tmp_path / "r.csv", 30, ["0", "1"])
    out = tmp_path / "pruned"
    code, _, err = run(capsys, "prune", "--model", model, "--task", "classification", "--text-column", "review",
                       "--data", data, "--output", out, "--num-tokens", "150", "--quiet")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    code, table, _ = run(capsys, "info", "--model", out, "--seq-len", "64")
    assert code == 0
    assert f"{report['flops_reduction']:.1%} at {report['avg_seq_len']:.1f} tokens" in table
    assert "at 64 tokens (--seq-len)" in table and "layer  heads  neurons" in table
    code, text, _ = run(capsys, "info", "--model", out, "--json")
    info = json.loads(text)
    assert info["flops_reduction_pruned"] == pytest.approx(report["flops_reduction"], rel=1e-9)
    assert info["heads_kept"] == report["heads_kept"]


# -- quiet, Ctrl-C, start-up -----------------------------------------------------------------------

def test_quiet_prints_nothing_but_the_result(tmp_path):
    model = save_model(tmp_path, 2)
    data = write_reviews(tmp_path / "r.csv", 10, ["0", "1"])
    done = subprocess.run([sys.executable, "-m", "kprune.cli", "prune", "--model", str(model), "--task",
                           "classification", "--text-column", "review", "--data", str(data), "--output",
                           str(tmp_path / "out"), "--num-tokens", "100000", "--quiet"],
                          capture_output=True, text=True, env=env_for_subprocess(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and json.loads(done.stdout)["output"] == str(tmp_path / "out")


def test_ctrl_c_stops_with_one_line_and_writes_nothing(tmp_path):
    model = save_model(tmp_path, 2, layers=6)
    data = write_reviews(tmp_path / "r.csv", 1000, ["0", "1"])
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "kprune.cli", "prune", "--model", str(model), "--task",
                                "classification", "--text-column", "review", "--data", str(data), "--output",
                                str(out), "--num-tokens", "8000", "--batch-size", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_for_subprocess())
    seen = bytearray()

    def read():
        for chunk in iter(lambda: process.stderr.read1(4096), b""):
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while b"K-prune" not in seen and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    assert process.poll() is None, "the prune ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)
    reader.join(timeout=10)
    lines = bytes(seen).decode().replace("\r", "\n").strip().splitlines()
    assert process.returncode == 130
    assert lines[-1] == "kprune: interrupted; nothing written"
    assert "Traceback" not in bytes(seen).decode()
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_cli_import_leaves_torch_unloaded():
    code = "import sys, kprune.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env_for_subprocess())
    assert done.stdout.strip() == "False", done.stderr
