"""The knowledge pass's saving forward (kprune.saving): what it keeps gives the recomputing backward's
results, its budget bounds what a batch keeps, and a whole run does not depend on the budget."""
import pytest
import torch

import kprune
from conftest import random_samples, tiny_model
from kprune.adapters import EncoderAdapter
from kprune.errors import ConfigError
from kprune.samples import make_batches
from kprune.saving import SaveBudget, run_sublayer_saving, saved_bytes
from kprune.sublayers import run_sublayer, sublayer_backward
from kprune.surgery import prune_heads, prune_neurons


def _inputs(adapter, seed=0):
    batch = make_batches(random_samples(6, seed=seed), 6)[0]
    with torch.no_grad():
        x = adapter.embed(batch.input_ids, batch.token_type_ids)
    return x, batch.key_mask


@pytest.mark.parametrize("family", ["bert", "distilbert", "mpnet", "xlm-roberta", "deberta-v2", "modernbert"])
@pytest.mark.parametrize("pruned", [False, True])
def test_saved_backward_equals_recomputed_backward(family, pruned):
    adapter = EncoderAdapter(tiny_model(family, "classification", layers=2))
    if pruned:   # fewer heads and neurons in layer 0, none at all in layer 1
        prune_heads(adapter, 0, [1, 3])
        prune_neurons(adapter, 0, list(range(0, 40, 3)))
        prune_heads(adapter, 1, [])
        prune_neurons(adapter, 1, [])
    x, real = _inputs(adapter)
    g = torch.Generator().manual_seed(1)
    for k in range(2 * adapter.num_layers):
        with torch.no_grad():
            plain = run_sublayer(adapter, k, x, real)
            out, inner = run_sublayer_saving(adapter, k, x, real)
        for a, b in zip((out.act, out.pre_norm, out.output), (plain.act, plain.pre_norm, plain.output)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        grad_out = torch.randn(plain.output.shape, generator=g)
        want = sublayer_backward(adapter, k, x, plain.pre_norm, real, grad_out)
        got = sublayer_backward(adapter, k, x, out.pre_norm, real, grad_out, saved=inner)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        # an independent reference: autograd through the sublayer's modules from x
        xg = x.clone().requires_grad_()
        ref = run_sublayer(adapter, k, xg, real)
        (grad_x,) = torch.autograd.grad(ref.output, xg, grad_out)
        torch.testing.assert_close(got[2], grad_x, atol=1e-5, rtol=1e-4)
        x = plain.output


def test_budget_reserves_only_what_fits():
    budget = SaveBudget(1.0)
    assert budget.take(600_000) and not budget.take(600_000) and budget.take(448_576)
    assert budget.spent == 2 ** 20 and not budget.take(1)
    assert not SaveBudget(0).take(1) and SaveBudget(0).take(0)


def test_saved_bytes_count_what_is_kept():
    adapter = EncoderAdapter(tiny_model("bert", "classification"))
    x, real = _inputs(adapter)
    tokens = x.shape[0] * x.shape[1]
    assert saved_bytes(adapter, 0, x) == 4 * tokens * 32 * 4          # Q, K, V, context: 4 heads x 8
    assert saved_bytes(adapter, 1, x) == tokens * 40 * 4              # the FFN's pre-activation
    with torch.no_grad():
        _, preact = run_sublayer_saving(adapter, 1, x, real)
    assert preact.numel() * preact.element_size() == saved_bytes(adapter, 1, x)


@pytest.mark.parametrize("groups", ["batch", "sample"])
def test_run_does_not_depend_on_the_budget(monkeypatch, groups):
    import kprune.pruner as pruner_module

    model = tiny_model("bert", "classification", layers=3)
    samples = random_samples(20, seed=6)
    calls = []
    real = pruner_module.run_sublayer_saving

    def counted(*args):
        calls.append(args[1])
        return real(*args)

    monkeypatch.setattr(pruner_module, "run_sublayer_saving", counted)
    results, saved = [], []
    # one batch of 8 samples x at most 20 tokens keeps at most ~20 KB per attention sublayer
    for mb in (0.0, 0.03, 256.0):
        calls.clear()
        config = kprune.KPruneConfig(progress=False, batch_size=8, gradient_groups=groups, saved_mb=mb)
        results.append(kprune.prune(model, samples, "classification", 0.5, config))
        saved.append(len(calls))
    assert saved[0] == 0 < saved[1] < saved[2]
    for other in results[1:]:
        assert other.report["heads_kept"] == results[0].report["heads_kept"]
        assert other.report["neurons_kept"] == results[0].report["neurons_kept"]
        a, b = results[0].model.state_dict(), other.model.state_dict()
        for name in a:
            torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), True, "256"])
def test_bad_saved_mb_is_refused(value):
    with pytest.raises(ConfigError, match="saved_mb"):
        kprune.KPruneConfig(saved_mb=value).validate()
