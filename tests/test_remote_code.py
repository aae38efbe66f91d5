"""Pruned folders load with transformers alone (trust_remote_code=True), with kprune not importable.

Every family x head is pruned unevenly (a layer with no heads, one with no neurons, kept units that
are not a prefix), saved, and loaded in a subprocess where ``import kprune`` and ``import kprune_ext``
fail; its outputs must equal those of :func:`kprune.load_pruned` in this process.
"""
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import kprune
from conftest import FAMILIES, HEADS, model_outputs, padded_batch, random_samples, tiny_model
from kprune import remote_modeling
from kprune.adapters import EncoderAdapter
from kprune.errors import DataError
from kprune.surgery import prune_heads, prune_neurons

# Runs in the subprocess: block kprune before anything else is imported, prove it, then load every
# folder with the Auto classes and write the outputs on the fixed inputs.
CHILD = r'''
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("kprune", "kprune_ext"):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Block())
blocked = []
for name in ("kprune", "kprune_ext"):
    try:
        __import__(name)
    except ImportError:
        blocked.append(name)

import inspect
import torch
import transformers

jobs = json.load(open(sys.argv[1]))
inputs = torch.load(sys.argv[2])
results = {"blocked": blocked, "models": {}}
with torch.no_grad():
    for job in jobs:
        ids, mask = inputs[job["name"]]
        auto = getattr(transformers, job["auto_class"])
        task = auto.from_pretrained(job["dir"], trust_remote_code=True, local_files_only=True).eval()
        encoder = transformers.AutoModel.from_pretrained(job["dir"], trust_remote_code=True,
                                                         local_files_only=True).eval()
        out = task(input_ids=ids, attention_mask=mask)
        task_out = (torch.stack([out.start_logits, out.end_logits], -1) * mask[..., None]
                    if hasattr(out, "start_logits") else out.logits)
        results["models"][job["name"]] = {
            "task": task_out, "hidden": encoder(input_ids=ids, attention_mask=mask).last_hidden_state,
            "task_mro": [c.__name__ for c in type(task).__mro__],
            "encoder_mro": [c.__name__ for c in type(encoder).__mro__],
            "signature": str(inspect.signature(type(task).forward)),
            "shapes": {k: tuple(v.shape) for k, v in task.state_dict().items()},
        }
results["leaked"] = sorted(m for m in sys.modules if m.split(".")[0] in ("kprune", "kprune_ext"))
torch.save(results, sys.argv[3])
'''


def uneven(family, head):
    """Layer 0 keeps heads 1 and 3 and odd-ish neurons, layer 1 no heads, layer 2 no neurons."""
    model = tiny_model(family, head, layers=3, seed=FAMILIES.index(family))
    adapter = EncoderAdapter(model)
    prune_heads(adapter, 0, [1, 3])
    prune_neurons(adapter, 0, [2, 5, 6, 11, 17, 30, 39])
    prune_heads(adapter, 1, [])
    prune_neurons(adapter, 1, range(1, 40, 3))
    prune_heads(adapter, 2, [0, 2, 3])
    prune_neurons(adapter, 2, [])
    return model


def cases():
    yield from ((f"{f}-{h}", lambda f=f, h=h: uneven(f, h)) for f in FAMILIES for h in HEADS)
    yield "bert-classification-unpruned", lambda: tiny_model("bert", "classification")
    samples, config = random_samples(12), kprune.KPruneConfig(progress=False, batch_size=6)
    yield "electra-qa-kprune", lambda: kprune.prune(tiny_model("electra", "qa"), samples, "qa", 0.6, config).model


def run_child(tmp_path, jobs, inputs):
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, "jobs.json", "inputs.pt", "results.pt"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp_path / "results.pt")


def test_pruned_folders_load_with_transformers_alone(tmp_path):
    jobs, inputs, expected = [], {}, {}
    for i, (name, build) in enumerate(cases()):
        model = build()
        out = kprune.save_pruned(model, tmp_path / name)
        assert (out / "modeling_kprune.py").read_bytes() == Path(remote_modeling.__file__).read_bytes()
        reference = kprune.load_pruned(out)
        ids, mask = padded_batch(random_samples(4, seed=10 + i), pad_id=model.config.pad_token_id or 0)
        assert torch.equal(model_outputs(reference, ids, mask), model_outputs(model, ids, mask))
        with torch.no_grad():
            hidden = reference.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        expected[name] = (reference, model_outputs(reference, ids, mask), hidden)
        auto_class = "AutoModelForQuestionAnswering" if "-qa" in name \
            else "AutoModelForSequenceClassification"
        assert json.loads((out / "config.json").read_text())["auto_map"][auto_class].startswith("modeling_kprune.")
        jobs.append({"name": name, "dir": str(out), "auto_class": auto_class})
        inputs[name] = (ids, mask)

    results = run_child(tmp_path, jobs, inputs)
    assert results["blocked"] == ["kprune", "kprune_ext"] and results["leaked"] == []
    for name, (reference, task_out, hidden) in expected.items():
        got = results["models"][name]
        cls = type(reference)
        assert cls.__name__ in got["task_mro"] and got["task_mro"][0] == "KPrune" + cls.__name__
        assert type(reference.base_model).__name__ in got["encoder_mro"]
        assert got["signature"] == str(inspect.signature(cls.forward))
        assert got["shapes"] == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
        torch.testing.assert_close(got["task"], task_out, atol=1e-5, rtol=0, msg=name)
        torch.testing.assert_close(got["hidden"], hidden, atol=1e-5, rtol=0, msg=name)
    pruned = expected["bert-qa"][0].bert.encoder.layer
    assert [layer.attention.output.dense.in_features for layer in pruned] == [16, 0, 24]
    assert [layer.output.dense.in_features for layer in pruned] == [7, 13, 0]


def test_a_model_loaded_through_remote_code_prunes_and_saves_again(tmp_path):
    first = kprune.save_pruned(uneven("distilbert", "regression"), tmp_path / "first")
    remote = transformers.AutoModelForSequenceClassification.from_pretrained(
        first, trust_remote_code=True, local_files_only=True).eval()
    prune_neurons(EncoderAdapter(remote), 0, [0, 4])
    second = kprune.save_pruned(remote, tmp_path / "second")
    config = json.loads((second / "config.json").read_text())
    assert config["architectures"] == ["DistilBertForSequenceClassification"]
    assert config["kprune"]["neurons_kept"] == [2, 13, 0] and config["kprune"]["heads_kept"] == [2, 0, 3]
    ids, mask = padded_batch(random_samples(3, seed=5))
    reloaded = model_outputs(kprune.load_pruned(second), ids, mask)
    torch.testing.assert_close(reloaded, model_outputs(remote, ids, mask), atol=1e-5, rtol=0)


def test_load_refuses_a_kprune_block_that_does_not_fit(tmp_path):
    out = kprune.save_pruned(uneven("bert", "classification"), tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    config["kprune"]["heads_kept"] = [4, 4]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="3 layers but heads_kept has 2"):
        kprune.load_pruned(out)
