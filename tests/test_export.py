"""ONNX export: pruned models of every family and head give PyTorch's outputs under onnxruntime."""
import numpy as np
import pytest
import torch

import transformers

from conftest import FAMILIES, HEADS, VOCAB, tiny_config, tiny_model
from kprune import ConfigError, DataError, OutputDirError, UnsupportedModelError, export_model, save_pruned
from kprune.adapters import EncoderAdapter
from kprune.cli import main
from kprune.surgery import prune_heads, prune_neurons

ort = pytest.importorskip("onnxruntime")

# per layer: kept heads (of 4) and kept neurons (of 40); a layer with no heads but some neurons, and one
# with some heads but no neurons (two layers keep the export, which dominates the test time, short)
KEPT_HEADS = ([], [0, 2, 3])
KEPT_NEURONS = ([1, 5, 7, 30, 31], [])


def pruned_model(family, head):
    model = tiny_model(family, head)
    adapter = EncoderAdapter(model)
    for layer, (heads, neurons) in enumerate(zip(KEPT_HEADS, KEPT_NEURONS)):
        prune_heads(adapter, layer, heads)
        prune_neurons(adapter, layer, neurons)
    assert adapter.units_kept() == ([0, 3], [5, 0])
    return model


def batch(batch_size, seq_len, seed):
    """Random ids with padding at the end of every other row, and two token-type segments."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (batch_size, seq_len), generator=g)
    mask = torch.ones_like(ids)
    mask[::2, seq_len - 3:] = 0
    ids[mask == 0] = 0
    types = (torch.arange(seq_len) >= seq_len // 2).long().expand(batch_size, seq_len).contiguous()
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def torch_outputs(model, inputs, names, outputs):
    with torch.no_grad():
        result = model(**{name: inputs[name] for name in names})
    return [getattr(result, name).numpy() for name in outputs]


def run_cli(capsys, *argv):
    code = main(["export", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def export_via(how, capsys, model_dir, output):
    if how == "api":
        assert export_model(model_dir, output) == output
    else:
        code, _, err = run_cli(capsys, "--model", str(model_dir), "--format", "onnx", "--output", str(output))
        assert code == 0, err


# every family and head is exported once (an export takes ~2 s); API and CLI alternate so that each
# family and each head goes through both
CASES = [(f, h, "api" if (i + j) % 2 == 0 else "cli") for i, f in enumerate(FAMILIES) for j, h in enumerate(HEADS)]


@pytest.mark.parametrize("family, head, how", CASES, ids=lambda v: str(v))
def test_onnx_matches_pytorch_at_dynamic_shapes(family, head, how, tmp_path, capsys):
    model = pruned_model(family, head)
    save_pruned(model, tmp_path / "pruned")
    output = tmp_path / "out" / "model.onnx"
    export_via(how, capsys, tmp_path / "pruned", output)
    assert [p.name for p in output.parent.iterdir()] == ["model.onnx"]   # no temp file left behind

    names = ["input_ids", "attention_mask"] + ([] if family in ("distilbert", "modernbert") else ["token_type_ids"])
    outputs = ["start_logits", "end_logits"] if head == "qa" else ["logits"]
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == names
    assert [o.name for o in session.get_outputs()] == outputs
    assert all(isinstance(dim, str) for i in session.get_inputs() for dim in i.shape)   # dynamic axes
    unpruned = tiny_model(family, head)
    for size, seed in (((3, 11), 1), ((1, 5), 2)):
        inputs = batch(*size, seed)
        got = session.run(outputs, {name: inputs[name].numpy() for name in names})
        expected = torch_outputs(model, inputs, names, outputs)
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            np.testing.assert_allclose(g, e, atol=1e-4, rtol=0)
        # the exported graph is the pruned model, not the original one
        original = torch_outputs(unpruned, inputs, names, outputs)
        assert not all(np.allclose(g, o, atol=1e-3) for g, o in zip(got, original))


def test_unpruned_folder_and_overwrite(tmp_path, capsys):
    model = tiny_model("bert", "classification")
    model.save_pretrained(tmp_path / "hf")
    output = tmp_path / "model.onnx"
    output.write_bytes(b"keep me")
    capsys.readouterr()
    code, _, err = run_cli(capsys, "--model", str(tmp_path / "hf"), "--output", str(output))
    assert code == 2 and err.startswith("kprune: error:") and "exists" in err and "--overwrite" in err
    assert output.read_bytes() == b"keep me"
    code, _, err = run_cli(capsys, "--model", str(tmp_path / "hf"), "--output", str(output), "--overwrite",
                           "--opset", "18")
    assert code == 0, err
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    inputs = batch(2, 9, 3)
    got = session.run(["logits"], {name: inputs[name].numpy() for name in names})[0]
    np.testing.assert_allclose(got, torch_outputs(model, inputs, names, ["logits"])[0], atol=1e-4, rtol=0)


class _FailingProgram:
    def save(self, path, external_data=False):
        with open(path, "wb") as handle:
            handle.write(b"half a model")
        raise RuntimeError("disk full")


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: _FailingProgram())
    model = tiny_model("roberta", "qa").train()   # the export evaluates in eval mode and restores the mode
    attention = model.config._attn_implementation
    assert attention != "eager"          # the export switches to eager attention, and back
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(model, tmp_path / "new.onnx")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "old.onnx").write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(model, tmp_path / "old.onnx", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old.onnx"]
    assert (tmp_path / "old.onnx").read_bytes() == b"previous"
    assert model.training and model.config._attn_implementation == attention


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(fmt="tflite"), ConfigError, "'tflite'"),
    (dict(fmt="ONNX"), ConfigError, "onnx"),
    (dict(opset=17), ConfigError, "18 to 23"),
    (dict(opset=24), ConfigError, "opset 24"),
    (dict(opset=20.0), ConfigError, "20.0"),
])
def test_bad_settings_are_refused(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        export_model(tiny_model("bert", "qa"), tmp_path / "m.onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_bad_paths_and_models_are_refused(tmp_path):
    model = tiny_model("electra", "classification")
    with pytest.raises(DataError, match="missing' is not a directory"):
        export_model(tmp_path / "missing", tmp_path / "m.onnx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="config.json"):
        export_model(tmp_path / "empty", tmp_path / "m.onnx")
    with pytest.raises(OutputDirError, match="is a directory"):
        export_model(model, tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="not a directory"):
        export_model(model, tmp_path / "file" / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file"]
    headless = transformers.BertForMaskedLM(tiny_config("bert", "classification"))   # no supported head
    with pytest.raises(UnsupportedModelError, match="BertForMaskedLM"):
        export_model(headless, tmp_path / "m.onnx")


def test_bare_encoder_exports_its_hidden_states(tmp_path):
    bare = transformers.BertModel(tiny_config("bert", "classification")).eval()   # e.g. an embedding model
    adapter = EncoderAdapter(bare)
    prune_heads(adapter, 0, [1, 2])
    prune_neurons(adapter, 1, [0, 3, 9])
    path = export_model(bare, tmp_path / "enc.onnx")
    inputs = batch(3, 9, seed=5)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["last_hidden_state"], {k: v.numpy() for k, v in inputs.items()})
    want = torch_outputs(bare, inputs, list(inputs), ["last_hidden_state"])
    real = inputs["attention_mask"].bool().numpy()
    assert abs(got[0][real] - want[0][real]).max() < 1e-4


@pytest.mark.parametrize("argv, message", [
    (["--model", "{tmp}/missing", "--output", "{tmp}/m.onnx"], "missing' is not a directory"),
    (["--model", "{tmp}", "--output", "{tmp}/m.onnx", "--opset", "9"], "opset 9"),
    (["--model", "{tmp}", "--output", "{tmp}"], "is a directory"),
])
def test_cli_bad_input_exits_2(tmp_path, capsys, argv, message):
    code, out, err = run_cli(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2 and out == "" and err.startswith("kprune: error:") and message in err


def test_cli_rejects_an_unknown_format(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--model", str(tmp_path), "--output", str(tmp_path / "m.onnx"), "--format", "tflite"])
    assert exit_info.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err


def test_cli_help_names_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0
    for option, words in (("--model", "model folder"), ("--format", "onnx"),
                          ("--output", "file to write"), ("--opset", "18 to 23 (default 20)"),
                          ("--overwrite", "replace an existing")):
        assert option in text and words in text
