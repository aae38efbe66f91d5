import contextvars
import copy
import math
from contextlib import nullcontext

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kprune
from conftest import model_outputs, padded_batch, random_samples, tiny_model
from kprune.adapters import EncoderAdapter
from kprune.errors import ConfigError, DataError, NumericalError, UnsupportedModelError
from kprune.pruner import KPruner
from kprune.samples import batch_slices, make_batches
from kprune.search import search_kept

FAST = dict(progress=False, batch_size=8)


def prune(model, task, reduction=0.5, samples=None, **config):
    samples = samples if samples is not None else random_samples(24)
    return kprune.prune(model, samples, task, reduction, kprune.KPruneConfig(**{**FAST, **config}))


def test_every_family_and_head_meets_the_budget(family_head):
    family, head = family_head
    model = tiny_model(family, head, layers=2)
    before = copy.deepcopy(model.state_dict())
    result = prune(model, head, 0.6)
    report = result.report
    assert report["flops_after"] <= report["flops_budget"] * (1 + 1e-9)
    assert report["flops_reduction"] >= 0.6 - 1e-9
    assert type(result.model) is type(model)
    assert report["params_after"] < report["params_before"]
    for name, tensor in model.state_dict().items():   # the input model is left unchanged
        assert torch.equal(tensor, before[name]), name
    ids, mask = padded_batch(random_samples(3, seed=9), pad_id=model.config.pad_token_id or 0)
    assert torch.isfinite(model_outputs(result.model, ids, mask)).all()


@pytest.mark.parametrize("groups", ["batch", "sample"])
def test_same_samples_same_model(groups):
    model = tiny_model("bert", "classification", layers=2)
    a = prune(model, "classification", 0.5, gradient_groups=groups).model
    b = prune(model, "classification", 0.5, gradient_groups=groups).model
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.skipif(not torch._C._dispatch_has_kernel_for_dispatch_key("mkldnn::_linear_pointwise", "CPU"),
                    reason="this torch has no oneDNN matmul")
def test_onednn_and_aten_gemms_prune_alike():
    """The float32 GEMM backend is a kernel choice: same kept units, weights equal to float32 rounding."""
    from kprune_ext import ops
    if ops.gemm_backend() == "aten" and ops.set_gemm_backend("onednn") != "onednn":
        pytest.skip("compiled extension not loaded")
    model = tiny_model("bert", "classification", layers=2)
    results, previous, min_macs = [], ops.gemm_backend(), ops.gemm_min_macs()
    try:
        for backend in ("onednn", "aten"):
            assert ops.set_gemm_backend(backend, min_macs=0) == backend   # every GEMM of the tiny model
            results.append(prune(model, "classification", 0.6))
    finally:
        ops.set_gemm_backend(previous, min_macs=min_macs)
    (a, b) = results
    assert a.report["heads_kept"] == b.report["heads_kept"] and a.report["neurons_kept"] == b.report["neurons_kept"]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], rtol=1e-4, atol=1e-5)


def test_sample_gradient_groups_do_not_depend_on_batching():
    model = tiny_model("bert", "classification", layers=2)
    samples = random_samples(20, seed=4)
    reports = [prune(model, "classification", 0.5, samples, gradient_groups="sample", batch_size=bs).report
               for bs in (4, 20)]
    assert reports[0]["heads_kept"] == reports[1]["heads_kept"]
    assert reports[0]["neurons_kept"] == reports[1]["neurons_kept"]


@pytest.mark.parametrize("measure_dtype", ["float32", "bfloat16"])
def test_batch_gradient_groups_do_not_depend_on_compute_batching(measure_dtype):
    """The paper's batch-mean gradients come from a seeded random partition into logical batches:
    cutting the compute batches otherwise (size, and so order and padding) changes nothing. In bf16 too:
    a bf16 pass rounds to bf16 at every cast, so any float32 difference between batchings (a padded
    attention row, a float32 sum in the tuned weights) would come out as a bf16 ulp; the compiled attention
    never reads padding and the least-squares sums are float64, so none arises."""
    from kprune_ext import ops
    if measure_dtype == "bfloat16" and not ops.attention_compiled(torch.device("cpu")):
        pytest.skip("bf16 batch invariance needs the compiled attention (aten's rows depend on the padding)")
    model = tiny_model("bert", "classification", layers=3)
    samples = random_samples(30, seed=5)
    runs = []
    for compute, tokens in ((3, None), (7, None), (30, None), (30, 40), (30, 1024)):
        config = kprune.KPruneConfig(progress=False, batch_size=8, compute_batch_size=compute,
                                     compute_batch_tokens=tokens, measure_dtype=measure_dtype)
        pruner = KPruner(model, samples, "classification", 0.6, config)
        stats = None
        for step in pruner.steps():
            if step.sublayer == 2:
                stats = pruner._measure(3)     # statistics of the current student, one step on
        runs.append(([step.kept for step in pruner.steps_done], stats))
    (kept0, stats0) = runs[0]
    for kept, stats in runs[1:]:
        assert kept == kept0
        for j in stats0:
            torch.testing.assert_close(stats[j].grad_sq, stats0[j].grad_sq, rtol=1e-4, atol=1e-12)
            torch.testing.assert_close(stats[j].act_sq, stats0[j].act_sq, rtol=1e-5, atol=1e-9)
    assert any(float(s.grad_sq.sum()) > 0 for s in stats0.values())
    # another seed is another partition: other batch-mean gradients
    other = KPruner(model, samples, "classification", 0.6,
                    kprune.KPruneConfig(progress=False, batch_size=8, seed=1))
    assert not torch.equal(other.groups.of_sample, KPruner(model, samples, "classification", 0.6,
                                                           kprune.KPruneConfig(progress=False, batch_size=8)).groups.of_sample)


@pytest.mark.parametrize("max_tokens", [None, 1, 40, 100, 10_000])
def test_compute_batches_hold_every_sample_once_within_both_caps(max_tokens):
    g = torch.Generator().manual_seed(3)
    lengths = [int(n) for n in torch.randint(1, 60, (57,), generator=g)]
    slices = batch_slices(lengths, 8, max_tokens)
    flat = [i for s in slices for i in s]
    assert flat == sorted(range(len(lengths)), key=lambda i: lengths[i])   # stable length order, each once
    for s in slices:
        assert 1 <= len(s) <= 8
        padded = len(s) * max(lengths[i] for i in s)
        assert max_tokens is None or padded <= max_tokens or len(s) == 1
    if max_tokens is None:   # no token cap: consecutive chunks of batch_size, as before the cap existed
        assert [len(s) for s in slices] == [8] * 7 + [1]
    if max_tokens == 40:     # greedy: a batch is cut only when the next sample would not fit
        for a, b in zip(slices, slices[1:]):
            assert len(a) == 8 or (len(a) + 1) * lengths[b[0]] > 40
    batches = make_batches([{"input_ids": torch.arange(1, n + 1)} for n in lengths], 8, max_tokens=max_tokens)
    assert [b.sample_index.tolist() for b in batches] == slices
    assert all(b.input_ids.shape == (len(s), max(lengths[i] for i in s)) for b, s in zip(batches, slices))


def test_compute_batch_size_and_seed_are_checked():
    with pytest.raises(kprune.ConfigError, match="compute_batch_size"):
        kprune.KPruneConfig(compute_batch_size=0).validate()
    for bad in (0, True, 2.5):
        with pytest.raises(kprune.ConfigError, match="compute_batch_tokens"):
            kprune.KPruneConfig(compute_batch_tokens=bad).validate()
    with pytest.raises(kprune.ConfigError, match="seed"):
        kprune.KPruneConfig(seed=0.5).validate()


class RandomScores(KPruner):
    """The real driver with arbitrary scores, to check the budget holds whatever they are."""

    def __init__(self, *args, score_seed=0, **kwargs):
        super().__init__(*args, **kwargs)
        self._g = torch.Generator().manual_seed(score_seed)

    def _scores(self, k, stats):
        return {j: torch.rand(s.act_sq.numel() // self._widths(j)[1], generator=self._g, dtype=torch.float64)
                .float() ** 4 for j, s in stats.items()}


@settings(max_examples=12, deadline=None)
@given(reduction=st.floats(0.01, 0.99), score_seed=st.integers(0, 10_000))
def test_budget_holds_for_any_scores(reduction, score_seed):
    model = tiny_model("bert", "classification", layers=3)
    pruner = RandomScores(model, random_samples(8), "classification", reduction,
                          kprune.KPruneConfig(**FAST, weight_tuning=False), score_seed=score_seed)
    report = pruner.run().report
    assert report["flops_after"] <= report["flops_budget"] * (1 + 1e-12)


@settings(max_examples=200, deadline=None)
@given(scores=st.lists(st.floats(0, 1e6, allow_nan=False), min_size=0, max_size=40),
       budget=st.floats(0, 100), cost=st.floats(0.1, 10))
def test_search_keeps_the_best_units_that_fit(scores, budget, cost):
    s = torch.tensor(scores, dtype=torch.float64)
    kept, tau = search_kept(s, torch.full_like(s, cost), budget)
    assert int(kept.sum()) * cost <= budget + 1e-9                      # fits
    assert kept.all() or (int(kept.sum()) + 1) * cost > budget           # nothing more would fit
    if kept.any() and (~kept).any():
        assert s[kept].min() >= s[~kept].max()                           # no pruned unit beats a kept one
        assert s[~kept].max() == tau


def test_all_equal_scores_keep_what_fits():
    kept, _ = search_kept(torch.zeros(10), torch.ones(10), 4.0)
    assert kept.tolist() == [True] * 4 + [False] * 6


def test_predictive_only_keeps_the_first_layer():
    """At step 0 predictive knowledge is zero everywhere: the budget is kept, not thrown away."""
    model = tiny_model("bert", "classification", layers=2)
    report = prune(model, "classification", 0.3, use_rep=False).report
    assert report["flops_reduction"] >= 0.3 - 1e-9
    assert report["heads_kept"][0] > 0


def test_weight_tuning_lowers_reconstruction_error():
    from kprune.sublayers import run_sublayer
    model = tiny_model("bert", "classification", layers=2)
    samples = random_samples(30, seed=5)
    errors = {}
    for tuning in (False, True):
        pruner = KPruner(model, samples, "classification", 0.6, kprune.KPruneConfig(**FAST, weight_tuning=tuning))
        steps = pruner.steps()
        for _ in range(2):        # attention and FFN of layer 0
            next(steps)
        teacher = EncoderAdapter(model)
        err = 0.0
        for batch in pruner.batches:
            with torch.no_grad():
                x0 = teacher.embed(batch.input_ids, batch.token_type_ids)
                t = run_sublayer(teacher, 1, run_sublayer(teacher, 0, x0, batch.key_mask).output, batch.key_mask)
                s = run_sublayer(pruner.student, 1, run_sublayer(pruner.student, 0, x0, batch.key_mask).output,
                                 batch.key_mask)
            err += float((s.pre_norm - t.pre_norm)[batch.key_mask].square().sum())
        errors[tuning] = err
        steps.close()
    assert errors[True] < errors[False]


@pytest.mark.parametrize("reduction", [0, 1, -0.1, 1.5, float("nan"), "0.5", True])
def test_reduction_outside_open_interval_is_refused(reduction):
    with pytest.raises(ConfigError, match="flops_reduction"):
        kprune.prune(tiny_model("bert", "classification"), random_samples(4), "classification", reduction)


def test_empty_and_malformed_samples_are_refused():
    model = tiny_model("bert", "classification")
    with pytest.raises(DataError, match="empty"):
        kprune.prune(model, [], "classification", 0.5)
    with pytest.raises(DataError, match="no tokens"):
        kprune.prune(model, [{"input_ids": torch.tensor([], dtype=torch.long)}], "classification", 0.5)
    with pytest.raises(DataError, match="outside the model's vocabulary"):
        kprune.prune(model, [{"input_ids": torch.tensor([1, 999])}], "classification", 0.5)


def test_task_must_fit_the_head():
    with pytest.raises(ConfigError, match="ForQuestionAnswering"):
        kprune.prune(tiny_model("bert", "classification"), random_samples(4), "qa", 0.5)
    with pytest.raises(ConfigError, match="num_labels=1"):
        kprune.prune(tiny_model("bert", "classification"), random_samples(4), "regression", 0.5)
    with pytest.raises(ConfigError, match="task kind"):
        kprune.prune(tiny_model("bert", "classification"), random_samples(4), "sst2", 0.5)


def test_unsupported_model_is_refused():
    import transformers
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, num_labels=2)
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        kprune.prune(transformers.GPT2ForSequenceClassification(config), random_samples(4), "classification", 0.5)


def test_non_finite_outputs_are_reported():
    model = tiny_model("bert", "classification")
    with torch.no_grad():
        model.bert.encoder.layer[1].output.dense.weight[0, 0] = float("nan")
    with pytest.raises(NumericalError, match="non-finite"):
        prune(model, "classification")


def test_padded_tokenizer_batch_is_accepted():
    model = tiny_model("bert", "classification")
    samples = random_samples(10)
    ids, mask = padded_batch(samples)
    by_list = prune(model, "classification", 0.5, samples).report
    by_batch = prune(model, "classification", 0.5, {"input_ids": ids, "attention_mask": mask}).report
    assert by_list["heads_kept"] == by_batch["heads_kept"]
    assert by_list["num_tokens"] == by_batch["num_tokens"] == sum(s["input_ids"].numel() for s in samples)


@pytest.mark.parametrize("family", ["bert", "distilbert", "modernbert"])
def test_recomputed_backward_equals_one_graph(family):
    model = tiny_model(family, "classification", layers=3)
    samples = random_samples(20, seed=6)
    results = [prune(model, "classification", 0.5, samples, recompute=flag) for flag in (True, False)]
    assert results[0].report["heads_kept"] == results[1].report["heads_kept"]
    assert results[0].report["neurons_kept"] == results[1].report["neurons_kept"]
    a, b = results[0].model.state_dict(), results[1].model.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("recompute,groups", [(True, "sample"), (False, "sample"), (True, "batch"), (False, "batch")])
def test_bfloat16_measurement_runs_in_bfloat16_and_agrees(monkeypatch, recompute, groups):
    import kprune.knowledge as knowledge
    seen = []
    # per-sample groups go through the importance op, logical batches through the group-sums op
    op_name = "accumulate_importance" if groups == "sample" else "accumulate_group_sums"
    real_op = getattr(knowledge.ops, op_name)

    def spy(act, grad, *args):
        seen.append((act.dtype, grad.dtype, torch.is_autocast_cache_enabled()))
        return real_op(act, grad, *args)

    monkeypatch.setattr(knowledge.ops, op_name, spy)
    model = tiny_model("bert", "qa", layers=3)
    samples = random_samples(24, seed=2)
    kept = {}
    for dtype in ("float32", "bfloat16"):
        seen.clear()
        config = kprune.KPruneConfig(**FAST, measure_dtype=dtype, recompute=recompute, gradient_groups=groups)
        pruner = KPruner(model, samples, "qa", 0.5, config)
        report = pruner.run().report
        assert report["flops_after"] <= report["flops_budget"] * (1 + 1e-9)
        assert report["config"]["measure_dtype"] == dtype
        want = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        assert seen and all(a == want and g == want for a, g, _ in seen)
        # autocast's cast cache would hold a bf16 copy of every batch's hidden states for the whole pass
        assert dtype == "float32" or not any(cache for *_, cache in seen)
        kept[dtype] = [set(step.kept) for step in pruner.steps_done]
    differing = sum(len(a ^ b) for a, b in zip(kept["float32"], kept["bfloat16"]))
    assert differing <= 0.05 * sum(len(a) for a in kept["float32"])


def test_attention_runs_in_float32_under_cpu_autocast(monkeypatch):
    """bf16 measurement keeps the projections in bf16 but the attention in float32 (aten's bf16 flash
    attention backward is much slower on CPU); the result is that attention on the bf16 projections. With
    the compiled kernel a real token's rows are bit-identical whatever the padded length of the batch.
    ``seen``: the precision each attention call computes in (aten's: its inputs'; the kernel widens bf16
    inputs itself and returns float32)."""
    import kprune.sublayers as sublayers
    from kprune_ext import reference
    seen = []
    real_sdpa, real_attention = sublayers.F.scaled_dot_product_attention, sublayers.ops.attention

    def spy_sdpa(q, k, v, **kwargs):
        seen.append(q.dtype)
        return real_sdpa(q, k, v, **kwargs)

    def spy_attention(q, k, v, lengths, scale):
        out = real_attention(q, k, v, lengths, scale)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(sublayers.F, "scaled_dot_product_attention", spy_sdpa)
    monkeypatch.setattr(sublayers.ops, "attention", spy_attention)
    adapter = EncoderAdapter(tiny_model("bert", "classification"))
    view = adapter.layer(0)
    x = torch.randn(2, 5, adapter.hidden_size)
    key_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    with torch.autocast("cpu", torch.bfloat16):
        ctx = sublayers.attention_context(view, x, key_mask)
    assert seen == [torch.float32] and ctx.dtype == torch.bfloat16
    shape = (2, 5, view.num_heads, view.head_size)
    q, k, v = (lin(x.bfloat16()).float().view(shape)   # what autocast's bf16 linears give
               for lin in (view.query.to(torch.bfloat16), view.key.to(torch.bfloat16), view.value.to(torch.bfloat16)))
    want = reference.attention(q, k, v, key_mask.sum(1), view.head_size ** -0.5).reshape(2, 5, -1)
    torch.testing.assert_close(ctx.float(), want.bfloat16().float(), rtol=2 ** -7, atol=1e-6)
    # without gradients too: a bf16 attention's rows would depend on the batch's padded length
    seen.clear()
    with torch.autocast("cpu", torch.bfloat16), torch.no_grad():
        padded = sublayers.attention_context(view, torch.cat([x, torch.zeros(2, 9, x.shape[-1])], 1),
                                             torch.cat([key_mask, torch.zeros(2, 9, dtype=torch.bool)], 1))
    assert seen == [torch.float32] and padded.dtype == torch.bfloat16
    if sublayers.ops.attention_compiled(x.device):
        assert torch.equal(padded[:, :5], ctx)   # the kernel never reads a padded key
    else:
        torch.testing.assert_close(padded[:, :5], ctx, rtol=2 ** -7, atol=1e-6)   # aten's: equal to rounding


@pytest.mark.parametrize("recompute", [True, False])
def test_bfloat16_pass_casts_each_weight_once_with_the_same_result(monkeypatch, recompute):
    """Under bf16 measurement a pass casts each weight once (kprune.precision.cached_casts), not at every GEMM
    of every batch; the statistics are bit for bit those of casting at every GEMM."""
    import kprune.precision as precision
    model = tiny_model("bert", "classification", layers=3)
    samples = random_samples(24, seed=3)
    config = kprune.KPruneConfig(**FAST, measure_dtype="bfloat16", recompute=recompute, compute_batch_size=4)
    results = []
    for cached in (True, False):
        pruner = KPruner(model, samples, "classification", 0.5, config)
        pruner._setup()
        pruner._measure(0)
        casts = []
        real_to = torch.Tensor.to
        weights = {p.data_ptr() for p in pruner.student.model.parameters() if p.dim() == 2}

        def counting_to(tensor, *args, **kwargs):
            out = real_to(tensor, *args, **kwargs)
            if tensor.data_ptr() in weights and out.dtype == torch.bfloat16:
                casts.append(tensor.data_ptr())
            return out

        with monkeypatch.context() as m:
            m.setattr(torch.Tensor, "to", counting_to)
            if not cached:   # autocast casts the weight at every GEMM instead
                m.setattr(precision, "_CASTS", contextvars.ContextVar("off", default=None))
                m.setattr("kprune.precision.cached_casts", nullcontext)
            stats = pruner._measure(1)
        results.append(({j: (s.grad_sq.clone(), s.act_sq.clone()) for j, s in stats.items()}, casts))
    (cached_stats, cached_casts), (plain_stats, _) = results
    assert cached_casts and len(cached_casts) == len(set(cached_casts))   # each weight once in the pass
    for j in cached_stats:
        for a, b in zip(cached_stats[j], plain_stats[j]):
            assert torch.equal(a, b)


def test_unknown_measure_dtype_is_refused():
    with pytest.raises(ConfigError, match="measure_dtype='float16'"):
        kprune.KPruneConfig(measure_dtype="float16").validate()


@pytest.mark.parametrize("flags,want", [({"avx512f", "avx512_bf16"}, "bfloat16"), ({"amx_bf16"}, "bfloat16"),
                                        ({"avx512f", "avx2"}, "float32"), (set(), "float32")])
def test_auto_measure_dtype_is_bfloat16_only_where_the_cpu_has_it(monkeypatch, flags, want):
    import kprune.precision as precision
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    model = tiny_model("bert", "classification", layers=2)
    samples = random_samples(16, seed=3)
    auto = KPruner(model, samples, "classification", 0.5, kprune.KPruneConfig(**FAST, measure_dtype="auto"))
    auto_result = auto.run()
    assert auto_result.report["config"]["measure_dtype"] == want   # the report says what ran
    explicit = KPruner(model, samples, "classification", 0.5, kprune.KPruneConfig(**FAST, measure_dtype=want)).run()
    for name, value in explicit.model.state_dict().items():
        torch.testing.assert_close(auto_result.model.state_dict()[name], value, rtol=0, atol=0)


def test_cpu_flags_are_read_from_proc_cpuinfo(tmp_path, monkeypatch):
    import kprune.precision as precision
    assert precision.resolve_measure_dtype("float32", "cpu") == "float32"
    assert precision.resolve_measure_dtype("auto", "meta") == "float32"   # no native bf16 known: float32
    precision.cpu_flags.cache_clear()
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n")
    monkeypatch.setattr(precision, "Path", lambda _: info)
    try:
        assert {"avx512_bf16", "avx512f"} <= precision.cpu_flags() and precision.native_bf16("cpu")
    finally:
        precision.cpu_flags.cache_clear()
