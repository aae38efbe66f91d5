"""ONNX export: pruned models of every family and head give PyTorch's outputs under onnxruntime."""
from collections import Counter

import numpy as np
import pytest
import torch

import onnx
import transformers
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from conftest import FAMILIES, HEADS, VOCAB, tiny_config, tiny_model
from kprune import ConfigError, DataError, OutputDirError, UnsupportedModelError, export_model, save_pruned
from kprune.adapters import EncoderAdapter
from kprune.cli import main
from kprune.onnx_layout import rewrite_for_cpu
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


def ort_graph_ops(path, work):
    """Op types of the graph onnxruntime runs after its own (ORT_ENABLE_ALL) optimisation of ``path``."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(work / "ort-optimised.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


def module_count(model, kind, nonempty=False, biased=False):
    return sum(isinstance(m, kind) and (not nonempty or m.weight.numel() > 0) and (not biased or m.bias is not None)
               for m in model.modules())


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
    # the default graph keeps onnxruntime's slow fused SkipLayerNormalization out and puts every dense layer
    # with weights (not the emptied ones) into a GEMM with its bias
    ops = ort_graph_ops(output, tmp_path)
    assert ops["SkipLayerNormalization"] == 0
    # DeBERTa's norm of its relative-position table acts on constants: the exporter folds it away
    folded = sum(isinstance(m, nn.LayerNorm) for n, m in model.named_modules() if n.endswith("encoder.LayerNorm"))
    assert ops["LayerNormalization"] == module_count(model, nn.LayerNorm) - folded
    # (a dense layer without a bias, as most of ModernBERT's, stays a MatMul unless onnxruntime makes it a Gemm)
    gemms = ops["Gemm"] + ops["FusedGemm"]
    assert module_count(model, nn.Linear, nonempty=True, biased=True) <= gemms <= module_count(model, nn.Linear, nonempty=True)
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
                          ("--overwrite", "replace an existing"), ("--no-optimize", "exporter's graph")):
        assert option in text and words in text


@pytest.mark.parametrize("how", ["api", "cli"])
def test_unoptimized_graph_is_the_exporters(how, tmp_path, capsys):
    model = pruned_model("bert", "classification")
    output = tmp_path / "plain.onnx"
    if how == "api":
        export_model(model, output, optimize=False)
    else:
        save_pruned(model, tmp_path / "pruned")
        code, _, err = run_cli(capsys, "--model", str(tmp_path / "pruned"), "--output", str(output), "--no-optimize")
        assert code == 0, err
    graph = onnx.load(output).graph
    assert not any(name.startswith("kprune_") for node in graph.node for name in (node.name, *node.output))
    assert ort_graph_ops(output, tmp_path)["SkipLayerNormalization"] > 0   # what the default graph avoids
    names = ["input_ids", "attention_mask", "token_type_ids"]
    inputs = batch(2, 7, 4)
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {name: inputs[name].numpy() for name in names})[0]
    np.testing.assert_allclose(got, torch_outputs(model, inputs, names, ["logits"])[0], atol=1e-4, rtol=0)


def _layer_norm(x, gamma, beta, axis, eps=1e-5):
    axes = tuple(range(axis % x.ndim, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def test_cpu_rewrite_keeps_the_numbers_and_leaves_other_patterns():
    """Hand-made graph: the rewritten patterns and the ones left alone give numpy's numbers."""
    rng = np.random.default_rng(0)
    consts = {"w1": rng.normal(size=(6, 5)), "b1": rng.normal(size=5), "w2": rng.normal(size=(6, 4)),
              "b2": rng.normal(size=4), "w0": np.zeros((6, 0)), "b0": np.zeros(0), "w3": rng.normal(size=(6, 5)),
              "b3": rng.normal(size=(3, 5)), "g": rng.normal(size=5), "beta": rng.normal(size=5),
              "g2": rng.normal(size=(3, 6)), "beta2": rng.normal(size=(3, 6))}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["p"]), helper.make_node("Add", ["b1", "p"], ["a"]),   # rewritten
             helper.make_node("MatMul", ["flat", "w1"], ["p2"]), helper.make_node("Add", ["p2", "b1"], ["a2"]),  # rank 2
             helper.make_node("MatMul", ["x", "w2"], ["q"]), helper.make_node("Add", ["q", "b2"], ["c"]),  # q is output
             helper.make_node("MatMul", ["x", "w0"], ["z"]), helper.make_node("Add", ["z", "b0"], ["e"]),  # zero-sized
             helper.make_node("MatMul", ["x", "w3"], ["r"]), helper.make_node("Add", ["r", "b3"], ["f"]),  # 2-D bias
             helper.make_node("LayerNormalization", ["a", "g", "beta"], ["n1"], epsilon=1e-5),          # rewritten
             helper.make_node("LayerNormalization", ["x", "g2", "beta2"], ["n2"], axis=1, epsilon=1e-5)]
    outputs = {"a2": ["b", 5], "q": ["b", 3, 4], "c": ["b", 3, 4], "e": ["b", 3, 0], "f": ["b", 3, 5],
               "n1": ["b", 3, 5], "n2": ["b", 3, 6]}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 6]),
                     helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["b", 6])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs.items()],
        initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    assert rewrite_for_cpu(model) == {"dense": 2, "layer_norm": 1}
    onnx.checker.check_model(model, full_check=True)
    assert Counter(n.op_type for n in model.graph.node)["MatMul"] == 3
    x, flat = rng.normal(size=(4, 3, 6)).astype(np.float32), rng.normal(size=(2, 6)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip(outputs, session.run(list(outputs), {"x": x, "flat": flat})))
    k = {name: v.astype(np.float32).astype(np.float64) for name, v in consts.items()}
    x64 = x.astype(np.float64)
    a = x64 @ k["w1"] + k["b1"]
    want = {"a2": flat.astype(np.float64) @ k["w1"] + k["b1"], "q": x64 @ k["w2"], "c": x64 @ k["w2"] + k["b2"],
            "e": np.zeros((4, 3, 0)), "f": x64 @ k["w3"] + k["b3"], "n1": _layer_norm(a, k["g"], k["beta"], -1),
            "n2": _layer_norm(x64, k["g2"], k["beta2"], 1)}
    for name in outputs:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=1e-5, err_msg=name)
