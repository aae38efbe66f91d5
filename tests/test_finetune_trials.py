"""benchmarks/finetune_trials.py: settings parsing and adopting a finished trial as the task's checkpoint."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import finetune_trials  # noqa: E402

SETTINGS = {"epochs": 5, "learning_rate": 5e-5, "batch_size": 16, "max_length": 128, "doc_stride": 128,
            "max_train_examples": None, "warmup_ratio": 0.1, "weight_decay": 0.01, "max_eval_examples": None}


def test_overrides_are_literals_of_known_settings():
    assert finetune_trials.parse_overrides(["epochs=5", "learning_rate=1e-4", "max_train_examples=None"]) == \
        {"epochs": 5, "learning_rate": 1e-4, "max_train_examples": None}
    with pytest.raises(SystemExit, match="bad setting 'lr=1'.*learning_rate"):
        finetune_trials.parse_overrides(["lr=1"])
    with pytest.raises(SystemExit, match="bad value in 'epochs=five'"):
        finetune_trials.parse_overrides(["epochs=five"])


def test_adopt_replaces_the_checkpoint_and_keeps_the_previous_one(tmp_path, capsys):
    trial = tmp_path / "trials" / "mrpc" / "e5"
    trial.mkdir(parents=True)
    (trial / "finetune.json").write_text(json.dumps({"settings": SETTINGS}))
    (trial / "model.safetensors").write_bytes(b"new")
    current = tmp_path / "finetuned" / "mrpc"
    current.mkdir(parents=True)
    (current / "model.safetensors").write_bytes(b"old")

    assert finetune_trials.main(["--task", "mrpc", "--adopt", "e5", "--cache-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["batch_size"] == 16
    assert (current / "model.safetensors").read_bytes() == b"new"
    assert (tmp_path / "finetuned-previous" / "mrpc" / "model.safetensors").read_bytes() == b"old"
    assert (trial / "model.safetensors").is_file()   # the trial itself stays
    assert sorted(p.name for p in current.parent.iterdir()) == ["mrpc"]   # no staging folder left

    with pytest.raises(SystemExit, match="no finished trial 'missing'"):
        finetune_trials.main(["--task", "mrpc", "--adopt", "missing", "--cache-dir", str(tmp_path)])
