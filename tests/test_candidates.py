"""Candidate improvements over the paper's recipe (issue 11), each a KPruneConfig switch off by default:
damping_search (KPWT damping by held-out error), head_refit (the head's output layer re-fitted to the
teacher); the paper's recipe one call / one flag away. Each checked against an independent computation."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
import transformers

import kprune
import kprune.pruner
import kprune.tuning
from conftest import padded_batch, random_samples, tiny_model
from kprune import heldout
from kprune.config import PAPER_RECIPE, RECIPE_FREE, KPruneConfig
from kprune.errors import ConfigError
from kprune.precision import native_bf16
from kprune.adapters import EncoderAdapter
from kprune.head_refit import head_output_layer

FAST = dict(progress=False, batch_size=8)


def _prune(model, task, samples, reduction=0.6, **switches):
    return kprune.prune(model, samples, task, reduction, KPruneConfig(**{**FAST, **switches}))


def _same_state(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return all(torch.equal(sa[k], sb[k]) for k in sa if k not in skip)


# -- the paper's recipe ----------------------------------------------------------------------------

def test_paper_recipe_is_the_paper_and_pins_every_algorithm_setting():
    paper = KPruneConfig.paper().to_dict()
    assert {k: paper[k] for k in PAPER_RECIPE} == dict(
        lambda_pred=1.0, lambda_rep=2.5e-4, mu=64.0, temperature=2.0, damping=1e-4, batch_size=32,
        gradient_groups="batch", weight_tuning=True, measure_dtype="float32", use_pred=True, use_rep=True,
        damping_search=False, ridge_prior="zero", head_refit=False, embedding_scale=20.0)
    # a new setting must be pinned by the recipe or declared free of it
    fields = {f.name for f in dataclasses.fields(KPruneConfig)}
    assert fields == set(PAPER_RECIPE) | set(RECIPE_FREE)
    assert KPruneConfig.paper(seed=3, head_refit=True).seed == 3
    assert KPruneConfig.recipe("paper", batch_size=8).to_dict() == KPruneConfig.paper(batch_size=8).to_dict()
    assert KPruneConfig.recipe("default") == KPruneConfig()
    with pytest.raises(ConfigError, match="recipe='fast'.*default, paper"):
        KPruneConfig.recipe("fast")


def test_switches_off_are_the_paper_and_never_call_the_candidates(monkeypatch):
    model = tiny_model("bert", "classification")
    samples = random_samples(24)

    def refuse(*args, **kwargs):
        raise AssertionError("a candidate ran with its switch off")
    monkeypatch.setattr(kprune.pruner, "refit_head", refuse)
    monkeypatch.setattr(kprune.pruner, "refit_selecting_damping", refuse)
    paper = kprune.prune(model, samples, "classification", 0.6, KPruneConfig.paper(**FAST))
    assert "damping_search" not in paper.report and "head_refit" not in paper.report


ADOPTED = {"damping_search": True, "ridge_prior": "original", "head_refit": True}


def test_the_default_is_the_paper_plus_the_adopted_switches_alone():
    """The adopted candidates (issue 11's rule, RESULTS.md): the default run is the paper's run with the
    held-out, towards-the-kept-weights KPWT and the head re-fit, measured in bf16 where the CPU computes it
    natively (the bf16 study's decision, benchmarks/bf16_report.py); nothing else differs."""
    precision = {"measure_dtype": "bfloat16"} if native_bf16("cpu") else {}
    for task in ("classification", "regression", "qa", "embedding"):
        default, paper = (c.for_task(task, 32).to_dict() for c in (KPruneConfig(), KPruneConfig.paper()))
        assert {k for k in PAPER_RECIPE if default[k] != paper[k]} == set(ADOPTED) | set(precision)
        assert {k: default[k] for k in {**ADOPTED, **precision}} == {**ADOPTED, **precision}
    assert KPruneConfig().measure_dtype == "auto"
    model = tiny_model("bert", "classification")
    samples = random_samples(24)
    default = _prune(model, "classification", samples)
    same = kprune.prune(model, samples, "classification", 0.6, KPruneConfig.paper(**FAST, **ADOPTED, **precision))
    assert default.report["config"] == same.report["config"] and _same_state(default.model, same.model)
    assert "head_refit" in default.report and len(default.report["damping_search"]) == 2 * 2


# -- held-out damping ------------------------------------------------------------------------------

def test_choose_damping_matches_an_explicit_two_fold_fit():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(60, 12, generator=g, dtype=torch.float64)
    b = a @ torch.randn(12, 3, generator=g, dtype=torch.float64) + 2.0 * torch.randn(60, 3, generator=g, dtype=torch.float64)
    fold = heldout.sample_folds(60, seed=1)
    assert int(fold.sum()) == 30
    prior = torch.randn(12, 3, generator=g, dtype=torch.float64)
    candidates = [None, 1e-4, 1e-2, 1.0, 100.0]
    best, errors = heldout.choose_damping(a.t() @ a, a.t() @ b, a[fold].t() @ a[fold], a[fold].t() @ b[fold],
                                          candidates, prior)
    want = {}
    for damping in candidates:
        total = 0.0
        for fit, held in ((~fold, fold), (fold, ~fold)):
            af, bf = a[fit], b[fit]
            if damping is None:
                x = prior
            else:
                lam = damping * float((af * af).sum(0).mean())
                x = torch.linalg.solve(af.t() @ af + lam * torch.eye(12, dtype=torch.float64), af.t() @ bf + lam * prior)
            total += float((a[held] @ x - b[held]).square().sum() - b[held].square().sum())
        want[damping] = total
    assert errors.keys() == want.keys()
    for damping in candidates:
        assert errors[damping] == pytest.approx(want[damping], rel=1e-9, abs=1e-9)
    assert best == min(want, key=want.get)


def test_damping_search_refits_with_the_damping_of_least_held_out_error(monkeypatch):
    """Each sublayer's choice is the argmin of its candidates' errors, and the weights written are the
    plain KPWT solution at that damping (the same run with the chosen dampings forced gives them)."""
    model = tiny_model("bert", "regression", layers=2)
    samples = random_samples(16, seed=3)
    searched = _prune(model, "regression", samples, damping_search=True, ridge_prior="zero")
    choices = searched.report["damping_search"]
    assert [c["sublayer"] for c in choices] == [k for k in range(4)]
    for choice in choices:
        errors = {float(d): e for d, e in choice["errors"].items()}
        assert set(errors) == {1e-4, *heldout.SUBLAYER_DAMPINGS}
        assert choice["damping"] == min(errors, key=errors.get)
    assert any(c["damping"] != 1e-4 for c in choices)   # a sample this small over-fits at the paper's damping

    forced = iter([c["damping"] for c in choices])
    plain_refit = kprune.tuning.SublayerTuner.refit
    monkeypatch.setattr(kprune.tuning.SublayerTuner, "refit",
                        lambda self, k, kept=None, damping=1e-4, **kw: plain_refit(self, k, kept, next(forced), **kw))
    replay = _prune(model, "regression", samples, damping_search=False, ridge_prior="zero")
    assert _same_state(searched.model, replay.model)


def test_ridge_to_original_weights_searches_no_refit_too_and_replays(monkeypatch):
    """ridge_prior="original": the candidates add strong dampings and "keep the weights" (None); the choice
    is each sublayer's argmin, a None choice leaves the kept units' weights as the teacher's, and the run
    equals one with the chosen dampings forced."""
    model = tiny_model("bert", "regression", layers=2)
    samples = random_samples(10, seed=4)
    searched = _prune(model, "regression", samples, damping_search=True, ridge_prior="original")
    choices = searched.report["damping_search"]
    for choice in choices:
        errors = {None if d == "None" else float(d): e for d, e in choice["errors"].items()}
        assert set(errors) == {1e-4, *heldout.SUBLAYER_DAMPINGS, *heldout.PRIOR_DAMPINGS}
        assert choice["damping"] == min(errors, key=errors.get)
    forced = iter([c["damping"] for c in choices])
    plain_refit = kprune.tuning.SublayerTuner.refit
    monkeypatch.setattr(kprune.tuning.SublayerTuner, "refit",
                        lambda self, k, kept=None, damping=1e-4, **kw: plain_refit(self, k, kept, next(forced), **kw))
    replay = _prune(model, "regression", samples, damping_search=False, ridge_prior="original")
    assert _same_state(searched.model, replay.model)


def test_every_task_defaults_to_the_held_out_refit_towards_the_kept_weights():
    default = KPruneConfig()
    assert default.damping_search is True and default.ridge_prior == "original"
    assert default.for_task("embedding", 64).mu == 128.0 and default.for_task("embedding", 32).mu == 64.0
    for task in ("classification", "regression", "qa"):
        resolved = default.for_task(task, 32)
        assert resolved.damping_search is True and resolved.ridge_prior == "original" and resolved.mu == 64.0
    assert KPruneConfig.paper().for_task("embedding", 64).damping_search is False
    assert KPruneConfig.paper().for_task("embedding", 64).mu == 64.0
    assert KPruneConfig(ridge_prior="zero").for_task("embedding", 64).ridge_prior == "zero"
    assert KPruneConfig(mu=10.0).for_task("embedding", 64).mu == 10.0
    for bad in ("yes", None):
        with pytest.raises(ConfigError, match=f"damping_search={bad!r} must be True or False"):
            KPruneConfig(damping_search=bad).validate()
    with pytest.raises(ConfigError, match="ridge_prior='auto'; accepted: zero, original"):
        KPruneConfig(ridge_prior="auto").validate()
    model = transformers.BertModel(tiny_model("bert", "classification").config).eval()
    report = _prune(model, "embedding", random_samples(12, seed=2)).report
    assert report["config"]["damping_search"] is True and report["config"]["ridge_prior"] == "original"
    assert report["config"]["mu"] == 2.0 * model.config.hidden_size / model.config.num_attention_heads
    assert len(report["damping_search"]) == 4


def test_ridge_to_original_with_no_refit_keeps_the_teacher_weights():
    teacher = tiny_model("bert", "regression", layers=2)
    tuner = kprune.tuner_for(kprune.apply_masks(teacher, kprune.UnitMasks.from_kept(teacher, [[0, 1], [2]],
                                                                                  [range(30), range(20)])),
                             teacher, random_samples(8, seed=1))
    dense = EncoderAdapter(tuner.student.model).layer(0).attn_out
    before = dense.weight.detach().clone()
    tuner.refit(0, kept=[0, 1], damping=None, ridge_prior="original")
    cols = torch.cat([torch.arange(h * 8, (h + 1) * 8) for h in (0, 1)])
    assert torch.equal(dense.weight[:, cols], before[:, cols])
    assert float(dense.weight.detach().abs().sum()) == float(before[:, cols].abs().sum())
    with pytest.raises(ConfigError, match="ridge_prior='towards'"):
        tuner.refit(0, damping=1e-4, ridge_prior="towards")
    with pytest.raises(ConfigError, match="ridge_prior='towards'.*zero, original"):
        KPruneConfig(ridge_prior="towards").validate()


def test_damping_search_lowers_the_error_on_unseen_samples():
    """Direction: on a sample too small for the paper's damping, the searched dampings fit unseen samples
    better (squared error of the regression output against the teacher's)."""
    model = tiny_model("bert", "regression", layers=2)
    samples, unseen = random_samples(12, seed=5), random_samples(200, seed=6)
    ids, mask = padded_batch(unseen)
    with torch.no_grad():
        teacher = model(input_ids=ids, attention_mask=mask).logits
        errors = {}
        for search in (False, True):
            pruned = _prune(model, "regression", samples, reduction=0.5, damping_search=search).model
            errors[search] = float((pruned(input_ids=ids, attention_mask=mask).logits - teacher).square().mean())
    assert errors[True] < errors[False]


def test_fold_statistics_take_the_held_out_rows_and_return_the_others():
    from kprune.samples import make_batches
    batches = make_batches(random_samples(10, seed=2), 4)
    fold = heldout.sample_folds(10, seed=0)
    observer = heldout.FoldStatistics(fold)
    acts, targets, rest_acts, rest_targets = [], [], [], []
    for batch in batches:
        n = batch.num_tokens
        act, target = torch.randn(n, 5), torch.randn(n, 3)
        rest_act, rest_target = observer.take(batch, act, target, None)
        rows = torch.cat([torch.full((int(l),), bool(fold[i])) for i, l in zip(batch.sample_index, batch.lengths)])
        acts.append(act[rows]), targets.append(target[rows])
        torch.testing.assert_close(rest_act, act[~rows], rtol=0, atol=0)
        torch.testing.assert_close(rest_target, target[~rows], rtol=0, atol=0)
    a, t = torch.cat(acts).double(), torch.cat(targets).double()
    assert 0 < a.shape[0] < sum(b.num_tokens for b in batches)
    assert observer.gram.dtype == observer.cross.dtype == torch.float64   # as the tuner's sums
    torch.testing.assert_close(observer.gram, a.t() @ a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(observer.cross, a.t() @ t, rtol=1e-12, atol=1e-12)


def test_statistics_with_a_held_out_half_are_the_whole_sample_sums():
    """The tuner sums the rows the held-out half leaves it; the two halves together are the whole sample's
    Gram and cross term, as without the split, and the held-out half's are its rows' alone."""
    from kprune.tuning import tuner_for
    teacher = tiny_model("bert", "classification", layers=2)
    student = copy.deepcopy(teacher)
    samples = random_samples(14, seed=3)
    kept = [0, 2, 5, 7]
    whole = tuner_for(student, teacher, samples, batch_size=4)
    whole.advance(0)
    expected = whole.statistics(1, kept)
    split = tuner_for(student, teacher, samples, batch_size=4)
    split.advance(0)
    observer = heldout.FoldStatistics(heldout.sample_folds(14, seed=1))
    split.held_out = observer
    got = split.statistics(1, kept)
    torch.testing.assert_close(got.gram, expected.gram, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.cross, expected.cross, rtol=1e-12, atol=1e-12)
    assert got.num_tokens == expected.num_tokens and got.target_sq == pytest.approx(expected.target_sq, rel=1e-12)
    assert 0 < float(observer.gram.trace()) < float(got.gram.trace())


# -- head re-fit -----------------------------------------------------------------------------------

@pytest.mark.parametrize("family,head", [("bert", "classification"), ("bert", "regression"), ("roberta", "classification"),
                                         ("distilbert", "qa"), ("modernbert", "qa"), ("modernbert", "classification"),
                                         ("deberta-v2", "classification"), ("mpnet", "qa"),
                                         ("electra", "classification")])
def test_head_refit_is_the_ridge_solution_on_the_model_own_forward(family, head):
    """Only the head's output layer changes, to the ridge fit (towards its old weights, at the damping
    chosen) of the teacher's outputs from the pruned student's features, computed here from the models'
    own forwards with a hook."""
    model = tiny_model(family, head)
    samples = random_samples(40, seed=1)
    plain = _prune(model, head, samples, head_refit=False).model
    refit = _prune(model, head, samples, head_refit=True)
    layer_name = [n for n, m in refit.model.named_modules() if m is head_output_layer(EncoderAdapter(refit.model))][0]
    assert _same_state(plain, refit.model, skip={layer_name + ".weight"})
    choice = refit.report["head_refit"]
    errors = {None if d == "None" else float(d): e for d, e in choice["errors"].items()}
    assert choice["damping"] == min(errors, key=errors.get)

    layer = head_output_layer(EncoderAdapter(plain))
    pad = model.config.pad_token_id or 0
    ids, mask = padded_batch(samples, pad_id=pad)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
        teacher = torch.stack([out.start_logits, out.end_logits], -1) if head == "qa" else out.logits
        plain(input_ids=ids, attention_mask=mask)
    handle.remove()
    features, target = seen[0].double(), teacher.double()
    if head == "qa":
        features, target = features[mask.bool()], target[mask.bool()]
    target = target - layer.bias.double()
    old = layer.weight.detach().double().t()
    if choice["damping"] is None:
        want = old
    else:
        gram = features.t() @ features
        lam = choice["damping"] * float(gram.diagonal().mean())
        want = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=torch.float64),
                                  features.t() @ target + lam * old)
    got = head_output_layer(EncoderAdapter(refit.model)).weight.detach().double().t()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_head_refit_brings_outputs_on_unseen_samples_closer_to_the_teacher():
    model = tiny_model("bert", "regression")
    samples = random_samples(200, seed=4)
    ids, mask = padded_batch(random_samples(200, seed=99))
    with torch.no_grad():
        teacher = model(input_ids=ids, attention_mask=mask).logits
        results = [_prune(model, "regression", samples, reduction=0.7, head_refit=on) for on in (False, True)]
        errors = [float((r.model(input_ids=ids, attention_mask=mask).logits - teacher).square().mean()) for r in results]
    assert results[1].report["head_refit"]["damping"] is not None
    assert errors[1] < 0.9 * errors[0]


# -- the command line --------------------------------------------------------------------------------

def test_cli_recipe_paper_writes_the_paper_config(tmp_path, capsys, monkeypatch):
    import transformers

    from conftest import tiny_config
    from fixtures_data import make_bert_tokenizer, sst2_rows, write_tsv
    from kprune.cli import main

    # were the defaults to change, --recipe paper must still give the paper's settings
    monkeypatch.setattr(KPruneConfig, "__init__", _with_defaults(KPruneConfig.__init__, head_refit=True,
                                                                  damping_search=True))
    tokenizer = make_bert_tokenizer(tmp_path / "tok")
    config = tiny_config("bert", "classification")
    config.vocab_size, config.num_labels = len(tokenizer), 2
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    write_tsv(tmp_path / "SST-2" / "train.tsv", sst2_rows(40))
    reports = {}
    for recipe in ("default", "paper"):
        out = tmp_path / recipe
        assert main(["prune", "--model", str(tmp_path / "model"), "--task", "sst2", "--data", str(tmp_path / "SST-2"),
                     "--flops-reduction", "0.5", "--output", str(out), "--num-tokens", "200", "--batch-size", "8",
                     "--quiet", "--recipe", recipe]) == 0
        reports[recipe] = json.loads((out / "report.json").read_text())
    capsys.readouterr()
    paper = reports["paper"]["config"]
    assert {k: paper[k] for k in PAPER_RECIPE if k != "batch_size"} == \
        {k: v for k, v in PAPER_RECIPE.items() if k != "batch_size"}
    assert "head_refit" not in reports["paper"] and "head_refit" in reports["default"]


def _with_defaults(init, **defaults):
    def patched(self, **kwargs):
        init(self, **{**defaults, **kwargs})
    return patched
