import json

import pytest
import torch

import kprune
from conftest import model_outputs, padded_batch, random_samples, tiny_model
from kprune.adapters import EncoderAdapter
from kprune.errors import DataError, OutputDirError
from kprune.surgery import prune_heads, prune_neurons


def pruned_tiny(family, head):
    model = tiny_model(family, head, layers=3)
    adapter = EncoderAdapter(model)
    prune_heads(adapter, 0, [1, 3])
    prune_heads(adapter, 1, [])
    prune_neurons(adapter, 1, range(0, 40, 3))
    prune_neurons(adapter, 2, [])
    return model


def test_save_and_load_reproduce_outputs_exactly(family_head, tmp_path):
    family, head = family_head
    model = pruned_tiny(family, head)
    out = kprune.save_pruned(model, tmp_path / "out", extra_files={"report.json": {"a": 1}})
    config = json.loads((out / "config.json").read_text())
    assert config["kprune"]["heads_kept"] == [2, 0, 4]
    assert config["kprune"]["neurons_kept"] == [40, 14, 0]
    assert json.loads((out / "report.json").read_text()) == {"a": 1}
    loaded = kprune.load_pruned(out)
    assert type(loaded) is type(model)
    ids, mask = padded_batch(random_samples(4, seed=2), pad_id=model.config.pad_token_id or 0)
    assert torch.equal(model_outputs(loaded, ids, mask), model_outputs(model, ids, mask))


def test_existing_output_is_refused_and_left_alone(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="not empty"):
        kprune.save_pruned(pruned_tiny("bert", "classification"), target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    kprune.save_pruned(pruned_tiny("bert", "classification"), target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    import kprune.io as io

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        kprune.save_pruned(pruned_tiny("bert", "classification"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_load_refuses_a_folder_without_config(tmp_path):
    with pytest.raises(DataError, match="config.json"):
        kprune.load_pruned(tmp_path)


def test_end_to_end_prune_save_load(tmp_path):
    model = tiny_model("distilbert", "qa")
    result = kprune.prune(model, random_samples(16), "qa", 0.7, kprune.KPruneConfig(progress=False, batch_size=8))
    out = kprune.save_pruned(result.model, tmp_path / "qa")
    loaded = kprune.load_pruned(out)
    ids, mask = padded_batch(random_samples(3, seed=7))
    assert torch.equal(model_outputs(loaded, ids, mask), model_outputs(result.model, ids, mask))


def test_output_gets_ordinary_file_modes(tmp_path):
    import os
    import stat
    old = os.umask(0o022)
    try:
        out = kprune.save_pruned(tiny_model("bert", "classification"), tmp_path / "out",
                                 extra_files={"report.json": {"a": 1}})
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name


def test_saved_config_names_the_saved_class_not_the_source_configs(tmp_path):
    model = tiny_model("bert", "classification")
    model.config.architectures = ["BertModel"]    # e.g. an encoder checkpoint given a classification head
    out = kprune.save_pruned(model, tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]
    loaded = kprune.load_pruned(out)
    assert type(loaded).__name__ == "BertForSequenceClassification"
    ids, mask = padded_batch(random_samples(4), 0)
    torch.testing.assert_close(model_outputs(loaded, ids, mask), model_outputs(model, ids, mask))
