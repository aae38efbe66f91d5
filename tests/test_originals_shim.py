"""benchmarks/originals (the shim that runs the original implementations on CPU with local data) and
benchmarks/run_originals.py's bookkeeping, without their code: it is never needed here. The one test
that runs their code is skipped unless KPRUNE_PAPER_CODE / KPRUNE_KWON_CODE name checkouts."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

from originals import shim  # noqa: E402
import run_originals  # noqa: E402


# ---------------------------------------------------------------- devices

@pytest.mark.parametrize("device,cuda", [("cuda", True), ("cuda:1", True), (torch.device("cuda", 0), True), (0, True),
                                         ("cpu", False), (torch.device("cpu"), False), (None, False), ("meta", False)])
def test_is_cuda(device, cuda):
    assert shim.is_cuda(device) is cuda


def test_cpu_args_replace_devices_only():
    args, kwargs = shim.cpu_args(("cuda", torch.float16), {"device": "cuda:0", "non_blocking": True})
    assert args == ("cpu", torch.float16)
    assert kwargs == {"device": "cpu", "non_blocking": True}
    args, kwargs = shim.cpu_args((torch.float64,), {})
    assert args == (torch.float64,) and kwargs == {}


def test_device_shim_keeps_tensors_and_modules_on_cpu(monkeypatch):
    # patch in a sandbox: monkeypatch restores torch's own methods after the test
    for owner, name in ((torch.Tensor, "cuda"), (torch.Tensor, "to"), (torch.Tensor, "pin_memory"),
                        (torch.nn.Module, "cuda"), (torch.nn.Module, "to")):
        monkeypatch.setattr(owner, name, getattr(owner, name))
    shim.install_device_shim()
    x = torch.arange(6.0)
    assert x.cuda() is x
    y = x.to("cuda", non_blocking=True)
    assert y.device.type == "cpu" and torch.equal(y, x)
    assert x.to("cuda:0", torch.float64).dtype == torch.float64
    assert x.to(device="cuda").device.type == "cpu"
    layer = torch.nn.Linear(3, 2)
    assert layer.cuda() is layer and layer.to("cuda").weight.device.type == "cpu"


# ---------------------------------------------------------------- solvers

@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_cupy_standin_is_scipy_lsmr_in_the_input_dtype():
    scipy_linalg = pytest.importorskip("scipy.sparse.linalg")
    modules = shim.make_cupy_modules(scipy_linalg.lsmr)
    cupy, lsmr = modules["cupy"], modules["cupyx.scipy.sparse.linalg"].lsmr
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    a = a @ a.T + 6 * np.eye(6)
    b = rng.normal(size=6)
    x, istop = lsmr(cupy.asarray(a), cupy.asarray(b), damp=1)[:2]
    assert x.dtype == np.float64 and istop < 3
    # damped least squares: (A^T A + damp^2 I) x = A^T b, solved independently
    expected = np.linalg.solve(a.T @ a + np.eye(6), a.T @ b)
    np.testing.assert_allclose(cupy.asnumpy(x), expected, rtol=1e-5, atol=1e-7)
    x32 = lsmr(a.astype(np.float32), b.astype(np.float32), damp=1)[0]
    assert x32.dtype == np.float32      # CuPy keeps float32 inputs in float32
    assert modules["cupyx"].scipy.sparse.linalg is modules["cupyx.scipy.sparse.linalg"]


def test_lstsq_defaults_to_cudas_driver(monkeypatch):
    seen = {}
    original = torch.linalg.lstsq

    def spy(A, B, rcond=None, *, driver=None):
        seen["driver"] = driver
        return original(A, B, rcond=rcond, driver=driver)

    monkeypatch.setattr(torch.linalg, "lstsq", spy)
    shim.install_lstsq_shim()
    a = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    solution = torch.linalg.lstsq(a, torch.tensor([[2.0], [2.0]]), rcond=0.).solution
    assert seen["driver"] == "gels"
    torch.testing.assert_close(solution, torch.tensor([[1.0], [0.5]]))
    torch.linalg.lstsq(a, torch.ones(2, 1), driver="gelsd")
    assert seen["driver"] == "gelsd"


# ---------------------------------------------------------------- data and metrics

def test_glue_records_have_the_hub_columns():
    assert shim.glue_record("sst2", ["good film"], 1, 4) == {"sentence": "good film", "label": 1, "idx": 4}
    assert shim.glue_record("stsb", ("a", "b"), "3.8", 0) == {"sentence1": "a", "sentence2": "b", "label": 3.8, "idx": 0}
    assert shim.glue_record("qqp", ("q1", "q2"), 0, 2)["question2"] == "q2"
    with pytest.raises(ValueError, match="takes 2 texts"):
        shim.glue_record("mrpc", ["only one"], 0, 0)
    with pytest.raises(ValueError, match="not a GLUE task"):
        shim.glue_record("squad", ["q", "c"], 0, 0)


def test_splits_round_trip_and_local_dirs(tmp_path):
    rows = [shim.glue_record("sst2", [f"s{i}"], i % 2, i) for i in range(5)]
    shim.write_split(rows, tmp_path / "sst2" / "train.jsonl")
    assert shim.read_split(tmp_path / "sst2" / "train.jsonl") == rows
    assert not list((tmp_path / "sst2").glob("*.tmp"))
    assert shim.local_dataset_dir(tmp_path, "glue", "sst2") == tmp_path / "sst2"
    assert shim.local_dataset_dir(tmp_path, "squad", None) == tmp_path / "squad"
    with pytest.raises(ValueError, match="no local copy"):
        shim.local_dataset_dir(tmp_path, "imdb", None)


def test_export_glue_writes_our_examples(tmp_path):
    data = tmp_path / "SST-2"
    data.mkdir()
    (data / "train.tsv").write_text("sentence\tlabel\nfine movie \t1\nbad one \t0\n")
    (data / "dev.tsv").write_text("sentence\tlabel\nok \t1\n")
    folder = run_originals.export_rows("sst2", data, tmp_path / "local")
    train = shim.read_split(folder / "train.jsonl")
    assert [r["label"] for r in train] == [1, 0] and [r["idx"] for r in train] == [0, 1]
    assert train[0]["sentence"].strip() == "fine movie"
    assert len(shim.read_split(folder / "validation.jsonl")) == 1


def test_glue_metric_against_independent_formulas():
    rng = np.random.default_rng(1)
    p, r = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    metric = shim.load_metric("glue", "mrpc")
    metric.add_batch(predictions=torch.tensor(p[:20]), references=torch.tensor(r[:20]))
    metric.add_batch(predictions=p[20:].tolist(), references=r[20:].tolist())
    out = metric.compute()
    tp, fp, fn = ((p == 1) & (r == 1)).sum(), ((p == 1) & (r == 0)).sum(), ((p == 0) & (r == 1)).sum()
    assert out["accuracy"] == pytest.approx((p == r).mean())
    assert out["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    cola = shim.load_metric("glue", "cola")
    cola.add_batch(predictions=p, references=r)
    tn = ((p == 0) & (r == 0)).sum()
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert cola.compute()["matthews_correlation"] == pytest.approx(mcc)
    x, y = rng.normal(size=40), rng.normal(size=40)
    x[3] = x[7]   # a tie: mean ranks
    stsb = shim.load_metric("glue", "stsb")
    stsb.add_batch(predictions=x, references=y)
    stats = pytest.importorskip("scipy.stats")
    out = stsb.compute()
    assert out["pearson"] == pytest.approx(stats.pearsonr(x, y)[0])
    assert out["spearmanr"] == pytest.approx(stats.spearmanr(x, y)[0])
    with pytest.raises(ValueError, match="no local equivalent"):
        shim.load_metric("squad_v2")


def test_export_squad_rows_and_dev_questions(tmp_path):
    context = "The cat sat on the mat. It was a sunny day in Paris."
    article = lambda qids: {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": q, "question": f"where {q}?", "answers": [{"text": "Paris", "answer_start": context.index("Paris")}]}
        for q in qids]}]}]}
    data = tmp_path / "squad"
    data.mkdir()
    (data / "train-v1.1.json").write_text(json.dumps(article(["a", "b", "c"])))
    (data / "dev-v1.1.json").write_text(json.dumps(article(["d", "e", "f"])))
    folder = run_originals.export_rows("squad", data, tmp_path / "local", max_eval_examples=2)
    assert folder.name == "squad" and folder.parent.name == "squad-dev-first2"   # the loader reads <data>/squad
    train, dev = shim.read_split(folder / "train.jsonl"), shim.read_split(folder / "validation.jsonl")
    assert [r["id"] for r in train] == ["a", "b", "c"] and [r["id"] for r in dev] == ["d", "e"]
    row = train[0]
    assert row["answers"]["text"] == ["Paris"]
    assert row["context"][row["answers"]["answer_start"][0]:].startswith("Paris")
    assert row["question"] == "where a?" and row["context"] == context


def test_squad_metric_equals_kprunes_official_scores():
    from kprune.data import Example
    from kprune.metrics import squad_scores

    examples = [Example(texts=("q", "c"), id=str(i), answers=[{"text": t, "answer_start": 0} for t in gold])
                for i, gold in enumerate([["The Eiffel Tower"], ["1889", "in 1889"], ["Gustave Eiffel"],
                                          ["a red, big house"], ["Paris"]])]
    predictions = {"0": "eiffel tower", "1": "1889.", "2": "Eiffel", "3": "the big red house", "4": "London"}
    metric = shim.load_metric("squad")
    out = metric.compute(predictions=[{"id": k, "prediction_text": v} for k, v in predictions.items()],
                         references=[{"id": e.id, "answers": shim.squad_record(e.id, "q", "c", e.answers)["answers"]}
                                     for e in examples])
    ours = squad_scores(predictions, examples, version_2=False)
    assert out["exact_match"] == pytest.approx(ours["exact_match"]) and out["exact_match"] == pytest.approx(40.0)
    assert out["f1"] == pytest.approx(ours["f1"])
    assert 40.0 < out["f1"] < 100.0


def test_peak_rss_window():
    if not shim.reset_peak_rss():
        pytest.skip("the kernel does not allow resetting VmHWM here")
    import mmap
    before = shim.peak_rss_mb()
    block = mmap.mmap(-1, 64 << 20)   # fresh pages: a numpy array could reuse heap memory already resident
    for offset in range(0, 64 << 20, 4096):
        block[offset] = 1
    assert shim.peak_rss_mb() >= before + 60
    block.close()


# ---------------------------------------------------------------- runner bookkeeping

def test_cells_resume_and_results_are_atomic(tmp_path):
    cells = run_originals.planned(["sst2", "stsb"], list(run_originals.METHODS), [0.5, 0.8], [0])
    assert len(cells) == 8 and cells[0] == ("sst2", "kprune-paper", 0.5, 0)
    assert cells[1] == ("sst2", "kwon-paper", 0.5, 0)
    out = tmp_path / "originals.json"
    results = run_originals.load_results(out)
    assert run_originals.pending(cells, results, 20000) == cells
    results["cells"]["sst2/kprune-paper/0.50/0"] = {"num_tokens_requested": 20000}
    results["cells"]["sst2/kwon-paper/0.50/0"] = {"num_tokens_requested": 100000}   # other sample size: redo
    run_originals.write_results(out, results)
    assert json.loads(out.read_text()) == results
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".originals.")]
    todo = run_originals.pending(cells, run_originals.load_results(out), 20000)
    assert ("sst2", "kprune-paper", 0.5, 0) not in todo and ("sst2", "kwon-paper", 0.5, 0) in todo
    assert len(todo) == 7


def test_their_arguments_translate_the_budget(tmp_path):
    paper = run_originals.their_arguments("kprune-paper", "sst2", tmp_path / "ck", 0.8, 3, tmp_path / "out")
    assert paper[paper.index("--constraint") + 1] == "0.8"          # fraction removed
    assert paper[paper.index("--exp_name") + 1] == str(tmp_path / "out")
    assert "--sublayerwise_tuning" in paper and paper[paper.index("--lam_rep") + 1] == "2.5e-4"
    kwon = run_originals.their_arguments("kwon-paper", "sst2", tmp_path / "ck", 0.8, 3, tmp_path / "out")
    assert float(kwon[kwon.index("--constraint") + 1]) == pytest.approx(0.2)   # fraction kept
    assert kwon[kwon.index("--seed") + 1] == "3"
    with pytest.raises(ValueError, match="unknown method"):
        run_originals.their_arguments("kwon", "sst2", tmp_path, 0.5, 0, tmp_path)


def test_achieved_reduction_uses_kprunes_flops_model():
    # hidden 8, head size 2, s = 4: F_head = 6*4*8*2 + 4*16*2 + 2*4*2*8 = 384 + 128 + 128, F_neuron = 4*4*8
    fh, fn = 640.0, 128.0
    full = 2 * (4 * fh + 10 * fn)
    kept = (1 * fh + 5 * fn) + (0 * fh + 10 * fn)
    got = run_originals.achieved_reduction([1, 0], [5, 10], [4, 4], [10, 10], 4.0, 8, 2)
    assert got == pytest.approx(1 - kept / full)


def test_kwon_masks_fold_into_our_model():
    """Kwon's mask values (head scales on attention probabilities, neuron scales on FFN activations)
    loaded into our model give the same outputs as the model run under those masks."""
    import kprune
    from conftest import tiny_model
    model = tiny_model("bert", "classification")
    layers = kprune.encoder_layers(model)
    heads = torch.tensor([[0.0, 1.5] + [1.0] * (layers[0].num_heads - 2)] * len(layers))
    neurons = torch.ones(len(layers), layers[0].num_neurons)
    neurons[:, :3] = 0.0
    neurons[:, 3] = 2.0
    pruned = run_originals.kwon_model(model, {"head_mask": heads, "neuron_mask": neurons})
    ids = torch.randint(5, 50, (2, 7))
    with torch.no_grad(), kprune.masked(model, kprune.UnitMasks(list(heads), list(neurons))):
        expected = model(input_ids=ids).logits
    torch.testing.assert_close(pruned(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)
    assert [v.num_heads for v in kprune.encoder_layers(pruned)] == [layers[0].num_heads - 1] * len(layers)


def test_paper_model_loads_their_tensors_and_drops_emptied_biases():
    """The paper's pruned model: its kept units, its tuned output projections loaded by name, and the
    output bias of a sublayer it emptied zeroed (their emptied sublayer is LayerNorm(residual))."""
    import kprune
    from conftest import tiny_model
    model = tiny_model("bert", "classification")
    layers = kprune.encoder_layers(model)
    head_masks = torch.ones(len(layers), layers[0].num_heads)
    head_masks[0] = 0.0                         # layer 0's attention emptied
    head_masks[1, 1] = 0.0
    neuron_masks = torch.ones(len(layers), layers[0].num_neurons)
    neuron_masks[:, ::3] = 0.0
    theirs = kprune.apply_masks(model, kprune.UnitMasks(list(head_masks), list(neuron_masks))).state_dict()
    tuned = {k: v * 2 if k.endswith("output.dense.weight") else v for k, v in theirs.items()
             if not k.startswith("bert.encoder.layer.0.attention.")}
    pruned = run_originals.paper_model(model, {"head_masks": head_masks, "neuron_masks": neuron_masks,
                                               "state_dict": tuned})
    got = pruned.state_dict()
    for key, value in tuned.items():
        torch.testing.assert_close(got[key], value)
    view = kprune.encoder_layers(pruned)[0]
    assert view.num_heads == 0 and torch.count_nonzero(view.attn_out.bias) == 0
    assert kprune.encoder_layers(pruned)[1].num_heads == layers[0].num_heads - 1
    wrong = dict(tuned)
    wrong["bert.encoder.layer.1.output.dense.weight"] = torch.zeros(3, 3)
    with pytest.raises(RuntimeError, match="do not fit"):
        run_originals.paper_model(model, {"head_masks": head_masks, "neuron_masks": neuron_masks, "state_dict": wrong})


@pytest.mark.skipif(not (os.environ.get("KPRUNE_PAPER_CODE") and os.environ.get("KPRUNE_ORIGINALS_PYTHON")),
                    reason="needs a checkout of the paper's code (KPRUNE_PAPER_CODE) and its venv (KPRUNE_ORIGINALS_PYTHON)")
def test_paper_code_checkout_is_runnable():
    """Only where a checkout is given: its entry point and the functions launch.py wraps exist."""
    code = Path(os.environ["KPRUNE_PAPER_CODE"])
    assert (code / "src" / "main.py").is_file()
    assert "def kprune(" in (code / "src" / "prune.py").read_text()
