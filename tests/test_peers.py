"""The benchmark peers (benchmarks/peers): Kwon et al. 2022 and the magnitude baseline, on tiny random BERTs."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import kprune  # noqa: E402
from kprune.adapters import EncoderAdapter  # noqa: E402
from peers import prune_kwon, prune_magnitude  # noqa: E402
from peers.kwon import pruned_objective, rearrange, search_mask, tune_masks  # noqa: E402

VOCAB = 50
KINDS = ("classification", "regression", "qa")


def tiny_bert(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=64, initializer_range=0.2,
                                     num_labels={"classification": 3, "regression": 1, "qa": 2}[kind])
    if kind == "regression":
        config.problem_type = "regression"
    cls = (transformers.BertForQuestionAnswering if kind == "qa"
           else transformers.BertForSequenceClassification)
    return cls(config).eval()


def labelled_samples(kind: str, count: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        n = int(torch.randint(4, 24, (1,), generator=g))
        sample = {"input_ids": torch.randint(2, VOCAB, (n,), generator=g),
                  "token_type_ids": (torch.arange(n) >= n // 2).long()}
        if kind == "classification":
            sample["labels"] = int(torch.randint(0, 3, (1,), generator=g))
        elif kind == "regression":
            sample["labels"] = float(torch.rand(1, generator=g)) * 5
        else:
            start = int(torch.randint(1, n, (1,), generator=g))
            sample["start_positions"] = start
            sample["end_positions"] = min(n - 1, start + 2)
        out.append(sample)
    return out


PEERS = {
    "kwon": prune_kwon,
    "kwon-search-only": lambda *a, **k: prune_kwon(*a, rearrangement=False, mask_tuning=False, **k),
    "magnitude": prune_magnitude,
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("peer", sorted(PEERS))
@pytest.mark.parametrize("reduction", [0.3, 0.6, 0.9])
def test_peer_meets_budget_and_returns_a_pruned_model(peer, kind, reduction):
    model = tiny_bert(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    samples = labelled_samples(kind)
    result = PEERS[peer](model, samples, kind, reduction, progress=False)
    report = result.model, result.report
    report = result.report
    assert report["flops_after"] <= report["flops_budget"] * (1 + 1e-9)
    assert report["flops_reduction"] >= reduction - 1e-9
    assert type(result.model) is type(model)
    assert report["params_after"] < report["params_before"]
    adapter = EncoderAdapter(result.model)
    assert adapter.units_kept() == (report["heads_kept"], report["neurons_kept"])
    assert sum(report["heads_kept"]) < 8 or sum(report["neurons_kept"]) < 96   # physically smaller
    ids = torch.randint(2, VOCAB, (3, 11))
    with torch.no_grad():
        out = result.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    logits = out.start_logits if kind == "qa" else out.logits
    assert torch.isfinite(logits).all()
    for key, value in model.state_dict().items():   # the input model is left unchanged
        assert torch.equal(value, before[key]), key
    reference = kprune.prune(tiny_bert(kind), samples, kind, reduction,   # the report every method shares
                             config=kprune.KPruneConfig.paper(progress=False)).report
    assert set(reference) <= set(report)


def test_search_mask_is_best_over_head_counts():
    torch.manual_seed(1)
    heads, neurons = torch.rand(2, 4, dtype=torch.float64), torch.rand(2, 48, dtype=torch.float64)
    head_cost, neuron_cost, budget = 10.0, 1.0, 60.0
    hm, nm = search_mask(heads, neurons, budget, head_cost, neuron_cost)
    assert hm.sum() * head_cost + nm.sum() * neuron_cost <= budget
    kept = float(heads[hm].sum() + neurons[nm].sum())
    for h in range(0, 7):  # brute force over head counts; neurons greedily fill the rest
        n = min(96, int((budget - h * head_cost) // neuron_cost))
        best = float(heads.flatten().sort(descending=True).values[:h].sum()
                     + neurons.flatten().sort(descending=True).values[:n].sum())
        assert kept >= best - 1e-9


def test_rearrangement_keeps_counts_and_does_not_raise_the_objective():
    torch.manual_seed(2)
    grads = torch.randn(30, 20) + torch.randn(30, 1)  # correlated units
    kept = torch.zeros(20, dtype=torch.bool)
    kept[grads.square().sum(0).argsort(descending=True)[:8]] = True
    new = rearrange(kept, grads)
    assert int(new.sum()) == 8
    assert pruned_objective(new, grads) <= pruned_objective(kept, grads) + 1e-9


@pytest.mark.parametrize("kind", KINDS)
def test_mask_tuning_lowers_layer_reconstruction_error(kind):
    model = tiny_bert(kind, seed=3)
    samples = labelled_samples(kind, seed=3)
    result = prune_kwon(model, samples, kind, 0.6, mask_tuning=False, progress=False)
    student = result.model
    log = tune_masks(model, student, samples)
    measured = [e for e in log if "error_before" in e]
    assert measured
    assert all(e["error_after"] <= e["error_before"] + 1e-9 for e in measured)
    assert any(e["error_after"] < 0.99 * e["error_before"] for e in measured)
    # the closed-form error of the first sublayer equals the one measured with hooks after tuning
    first = log[0]
    if "error_before" in first:
        pre_norm = {}
        handles = [m.bert.encoder.layer[0].attention.output.LayerNorm.register_forward_pre_hook(
            lambda mod, args, key=key: pre_norm.__setitem__(key, args[0])) for key, m in (("t", model), ("s", student))]
        total, tokens = 0.0, 0
        with torch.no_grad():
            for s in samples:
                ids, types = s["input_ids"][None], s["token_type_ids"][None]
                model(input_ids=ids, token_type_ids=types)
                student(input_ids=ids, token_type_ids=types)
                total += float((pre_norm["s"] - pre_norm["t"]).double().square().sum())
                tokens += ids.numel()
        for h in handles:
            h.remove()
        assert total / tokens == pytest.approx(first["error_after"], rel=1e-3, abs=1e-6)


def test_physical_pruning_equals_masking():
    model = tiny_bert("classification", seed=4)
    samples = labelled_samples("classification", seed=4)
    result = prune_kwon(model, samples, "classification", 0.5, rearrangement=False, mask_tuning=False,
                        progress=False)
    # recover the kept units from the weights: kept rows are a subset of the original rows
    heads_kept, neurons_kept = [], []
    for full, pruned in zip(kprune.encoder_layers(model), kprune.encoder_layers(result.model)):
        neurons_kept.append([i for i in range(full.ffn_in.out_features)
                             if any(torch.equal(full.ffn_in.weight[i], r) for r in pruned.ffn_in.weight)])
        heads_kept.append([h for h in range(full.num_heads)
                           if any(torch.equal(full.query.weight[h * 8:(h + 1) * 8], pruned.query.weight[j * 8:(j + 1) * 8])
                                  for j in range(pruned.num_heads))])
    masks = kprune.UnitMasks.from_kept(model, heads_kept, neurons_kept)
    assert masks.counts() == EncoderAdapter(result.model).units_kept()
    ids = torch.stack([s["input_ids"][:4] for s in samples])
    with torch.no_grad(), kprune.masked(model, masks):
        want = model(input_ids=ids).logits
    with torch.no_grad():
        got = result.model(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_unlabelled_regression_is_refused():
    model = tiny_bert("regression")
    samples = [{"input_ids": s["input_ids"]} for s in labelled_samples("regression")]
    with pytest.raises(ValueError, match="labelled"):
        prune_kwon(model, samples, "regression", 0.5, progress=False)


def test_unlabelled_classification_uses_pseudo_labels():
    model = tiny_bert("classification")
    samples = [{"input_ids": s["input_ids"]} for s in labelled_samples("classification")]
    result = prune_kwon(model, samples, "classification", 0.5, progress=False)
    assert result.report["flops_after"] <= result.report["flops_budget"] * (1 + 1e-9)


def test_peers_use_only_the_public_api():
    import ast
    for path in sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "peers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert not name.startswith(("kprune.", "kprune_ext.")), f"{path.name} imports {name}"


def test_rearrangement_is_the_swap_procedure():
    """Against a naive swap search: start from the least important units, let each other unit (by
    increasing importance) join, then drop the member whose absence gives the smallest objective."""
    torch.manual_seed(5)
    grads = torch.randn(12, 9) + 0.5 * torch.randn(12, 1)
    importance = grads.square().sum(0)
    kept = torch.zeros(9, dtype=torch.bool)
    kept[importance.argsort(descending=True)[:4]] = True
    order = importance.argsort().tolist()
    pruned = order[:5]
    for unit in order[5:]:
        candidates = pruned + [unit]
        costs = []
        for drop in candidates:
            rest = [u for u in candidates if u != drop]
            costs.append(float(grads[:, rest].sum(1).square().sum()))
        pruned = [u for u in candidates if u != candidates[costs.index(min(costs))]]
    expected = torch.ones(9, dtype=torch.bool)
    expected[pruned] = False
    assert torch.equal(rearrange(kept, grads), expected)
