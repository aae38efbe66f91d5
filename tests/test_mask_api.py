"""The mask-level API against independent references: masked runs against surgery and against
forward hooks, per-sample mask gradients against one-sample autograd, knowledge against hooks,
the least-squares re-fit against a float64 solve, and the API composed by hand against kprune.prune."""
import copy

import pytest
import torch
import torch.nn.functional as F

import kprune
import kprune_ext
from conftest import model_outputs, padded_batch, random_samples, tiny_model
from kprune.adapters import EncoderAdapter
from kprune.samples import make_batches


def _random_masks(model, seed=0, binary=False):
    g = torch.Generator().manual_seed(seed)
    masks = kprune.UnitMasks.ones(model)
    for values in masks.heads + masks.neurons:
        keep = torch.rand(values.shape, generator=g) < 0.6
        scale = torch.ones(values.shape) if binary else 0.5 + torch.rand(values.shape, generator=g)
        values.copy_(keep * scale)
    masks.heads[0].zero_()          # a layer with no heads left
    masks.neurons[-1].zero_()       # and one with no neurons
    return masks


class HookMasks:
    """Reference: forward pre-hooks multiply each output projection's input by its mask (per dimension)."""

    def __init__(self, model, masks):
        adapter = EncoderAdapter(model)
        self.acts, self.handles = {}, []
        for l in range(adapter.num_layers):
            view = adapter.layer(l)
            for k, module, values in ((2 * l, view.attn_out, masks.heads[l].repeat_interleave(view.head_size)),
                                      (2 * l + 1, view.ffn_out, masks.neurons[l])):
                self.handles.append(module.register_forward_pre_hook(self._hook(k, values)))

    def _hook(self, k, values):
        def hook(module, args):
            self.acts[k] = args[0]
            return (args[0] * values,)
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def test_masked_run_equals_surgery_and_hooks(family_head):
    family, head = family_head
    model = tiny_model(family, head, layers=3, seed=1)
    samples = random_samples(9, seed=2)
    ids, mask = padded_batch(samples, model.config.pad_token_id or 0)
    masks = _random_masks(model, seed=3)
    plain = model_outputs(model, ids, mask)
    modules_before = dict(model.named_modules())
    with kprune.masked(model, masks):
        got = model_outputs(model, ids, mask)
    assert dict(model.named_modules()) == modules_before          # restored, same objects
    torch.testing.assert_close(model_outputs(model, ids, mask), plain)
    hooks = HookMasks(model, masks)
    want = model_outputs(model, ids, mask)
    hooks.remove()
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    pruned = kprune.apply_masks(model, masks)
    torch.testing.assert_close(model_outputs(pruned, ids, mask), got, atol=2e-5, rtol=1e-4)
    heads, neurons = EncoderAdapter(pruned).units_kept()
    assert (heads, neurons) == masks.counts() and heads[0] == 0 and neurons[-1] == 0
    with kprune.masked(model):                                     # no masks: the model itself
        torch.testing.assert_close(model_outputs(model, ids, mask), plain, atol=2e-5, rtol=1e-4)


def test_masked_run_skips_zero_units_in_the_compiled_ops(monkeypatch):
    from kprune_ext import ops
    model = tiny_model("bert", "classification", layers=2)
    masks = _random_masks(model, seed=4, binary=True)
    seen = []
    real_ffn, real_att = ops.masked_ffn, ops.masked_attention_output
    monkeypatch.setattr(ops, "masked_ffn", lambda *a: seen.append(("ffn", a[5].numel())) or real_ffn(*a))
    monkeypatch.setattr(ops, "masked_attention_output", lambda *a: seen.append(("att", a[3].numel())) or real_att(*a))
    ids, mask = padded_batch(random_samples(4), 0)
    with kprune.masked(model, masks):
        model_outputs(model, ids, mask)
    heads, neurons = masks.counts()
    want = []
    for l in range(2):
        want += ([("att", heads[l])] if heads[l] else [("att", 0)]) + [("ffn", neurons[l])]
    assert seen == want


def test_masked_run_restores_the_model_after_an_error():
    model = tiny_model("distilbert", "qa")
    before = dict(model.named_modules())
    with pytest.raises(RuntimeError, match="boom"):
        with kprune.masked(model):
            raise RuntimeError("boom")
    assert dict(model.named_modules()) == before


def test_masks_that_do_not_fit_are_refused():
    model = tiny_model("bert", "classification")
    masks = kprune.UnitMasks.ones(model)
    masks.heads[1] = torch.ones(5)
    with pytest.raises(kprune.ConfigError, match="layer 1"):
        with kprune.masked(model, masks):
            pass
    with pytest.raises(kprune.ConfigError, match="layers"):
        kprune.apply_masks(model, kprune.UnitMasks(masks.heads[:1], masks.neurons[:1]))


def test_mask_gradients_equal_per_sample_autograd():
    model = tiny_model("roberta", "classification", layers=2, seed=5)
    samples = random_samples(7, seed=6)
    labels = torch.arange(7) % 3
    ids, mask = padded_batch(samples, 1)
    batches = [{"input_ids": ids[:4], "attention_mask": mask[:4], "labels": labels[:4]},
               {"input_ids": ids[4:], "attention_mask": mask[4:], "labels": labels[4:]}]
    masks = _random_masks(model, seed=7)

    def loss_fn(outputs, batch):
        return F.cross_entropy(outputs.logits, batch["labels"], reduction="none")

    heads, neurons = kprune.mask_gradients(model, batches, loss_fn, masks)
    assert heads[0].shape == (7, 4) and neurons[1].shape == (7, 40)
    for i in range(7):
        live = kprune.UnitMasks([m.clone().requires_grad_() for m in masks.heads],
                                [m.clone().requires_grad_() for m in masks.neurons])
        hooks = HookMasks(model, live)
        n = int(mask[i].sum())
        logits = model(input_ids=ids[i:i + 1, :n]).logits
        grads = torch.autograd.grad(F.cross_entropy(logits, labels[i:i + 1]), live.heads + live.neurons)
        hooks.remove()
        for got, want in zip([h[i] for h in heads] + [n_[i] for n_ in neurons], grads):
            torch.testing.assert_close(got.float(), want, atol=1e-5, rtol=1e-4)


def _naive_knowledge(model, samples, masks, teacher, groups, batch_size, temperature=2.0):
    """K_pred, K_rep per dimension from hooks and autograd on per-dimension masks."""
    adapter = EncoderAdapter(model)
    num_sub = 2 * adapter.num_layers
    grad_sq, act_sq = [0.0] * num_sub, [0.0] * num_sub
    dim_masks = []
    for l in range(adapter.num_layers):
        dim_masks += [masks.heads[l].repeat_interleave(adapter.head_size), masks.neurons[l]]
    if groups == "batch":   # the paper's logical batches: a seeded random permutation cut in batch_size
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0)).tolist()
        chunks = [[samples[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]
    else:
        chunks = [samples]
    for chunk in chunks:
        batch = make_batches(chunk, len(chunk))[0]
        live = [m.clone().requires_grad_() for m in dim_masks]
        handles, acts = [], {}
        for l in range(adapter.num_layers):
            view = adapter.layer(l)
            for k, module in ((2 * l, view.attn_out), (2 * l + 1, view.ffn_out)):
                def hook(module, args, k=k):
                    acts[k] = args[0]
                    return (args[0] * live[k],)
                handles.append(module.register_forward_pre_hook(hook))
        logits = model(input_ids=batch.input_ids, attention_mask=batch.key_mask.long()).logits
        for h in handles:
            h.remove()
        with torch.no_grad():
            t_logits = teacher(input_ids=batch.input_ids, attention_mask=batch.key_mask.long()).logits
        log_t, log_s = F.log_softmax(t_logits / temperature, -1), F.log_softmax(logits / temperature, -1)
        per_sample = temperature ** 2 * (log_t.exp() * (log_t - log_s)).sum(-1)
        if groups == "batch":
            grads = [torch.autograd.grad(per_sample.mean(), live, retain_graph=True)]
        else:
            grads = [torch.autograd.grad(per_sample[i] / batch_size, live, retain_graph=True)
                     for i in range(per_sample.numel())]
        for k in range(num_sub):
            grad_sq[k] = grad_sq[k] + sum(g[k].double().square() for g in grads)
            act_sq[k] = act_sq[k] + acts[k][batch.key_mask].double().square().sum(0)
    return grad_sq, act_sq


@pytest.mark.parametrize("groups", ["batch", "sample"])
def test_measure_knowledge_equals_hooks_and_autograd(groups):
    teacher = tiny_model("bert", "classification", layers=2, seed=8)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    samples = random_samples(13, seed=9)
    masks = _random_masks(student, seed=10)
    config = kprune.KPruneConfig(batch_size=5, gradient_groups=groups)
    got = kprune.measure_knowledge(student, samples, "classification", teacher=teacher, masks=masks, config=config)
    grad_sq, act_sq = _naive_knowledge(student, samples, masks, teacher, groups, 5)
    adapter, n_samples = EncoderAdapter(student), len(samples)
    n_tokens = sum(s["input_ids"].numel() for s in samples)
    for l in range(2):
        view = adapter.layer(l)
        for k, width, weight, k_pred, k_rep in (
                (2 * l, view.head_size, view.attn_out.weight, got.predictive_heads[l], got.representational_heads[l]),
                (2 * l + 1, 1, view.ffn_out.weight, got.predictive_neurons[l], got.representational_neurons[l])):
            on = ((masks.heads[l] if k % 2 == 0 else masks.neurons[l]) != 0).double()   # zero-mask units: no knowledge
            want_pred = (0.5 * grad_sq[k] / n_samples).view(-1, width).mean(1) * on
            want_rep = (act_sq[k] * weight.double().square().mean(0) / n_tokens).view(-1, width).mean(1) * on
            torch.testing.assert_close(k_pred.double(), want_pred, atol=1e-9, rtol=2e-3)
            torch.testing.assert_close(k_rep.double(), want_rep, atol=1e-9, rtol=1e-4)
    assert float(sum(p.sum() for p in got.predictive_neurons)) > 0
    # zero-mask units carry no knowledge
    assert float(got.representational_heads[0].abs().sum()) == 0.0
    # the student as its own teacher: predictive knowledge is zero and representational unchanged
    alone = kprune.measure_knowledge(student, samples, "classification", config=config)
    assert all(float(p.abs().sum()) == 0.0 for p in alone.predictive_heads + alone.predictive_neurons)


@pytest.mark.parametrize("ridge_prior, damping", [("zero", 1e-4), ("original", 0.3)])
def test_refit_equals_a_float64_solve_on_captured_activations(ridge_prior, damping):
    teacher = tiny_model("electra", "regression", layers=2, seed=11)
    student = kprune.apply_masks(teacher, kprune.UnitMasks.from_kept(teacher, [[0, 1, 3], [2]], [range(40), range(30)]))
    samples = random_samples(12, seed=12)
    sublayer, kept = 3, [0, 3, 5, 7, 11, 20, 29]
    # reference: capture X, A and the teacher's pre-LayerNorm output with hooks on the HF modules
    captured = {}
    t_layer = EncoderAdapter(teacher).layers[1]
    s_layer = EncoderAdapter(student).layers[1]
    handles = [t_layer.output.LayerNorm.register_forward_pre_hook(lambda m, a: captured.__setitem__("y", a[0])),
               s_layer.output.dense.register_forward_pre_hook(lambda m, a: captured.__setitem__("a", a[0])),
               s_layer.intermediate.register_forward_pre_hook(lambda m, a: captured.__setitem__("x", a[0]))]
    ids, mask = padded_batch(samples, 0)
    with torch.no_grad():
        teacher(input_ids=ids, attention_mask=mask)
        student(input_ids=ids, attention_mask=mask)
    for h in handles:
        h.remove()
    real = mask.bool()
    dense = s_layer.output.dense
    a = captured["a"][real].double()[:, kept]
    target = (captured["y"] - captured["x"])[real].double() - dense.bias.double()
    gram = a.T @ a
    ridge = damping * gram.diagonal().mean()
    # "original": the ridge pulls towards the kept units' weights before the re-fit, not towards zero
    prior = dense.weight[:, kept].detach().double().T.clone() if ridge_prior == "original" else 0.0
    want = torch.linalg.solve(gram + ridge * torch.eye(len(kept), dtype=torch.float64), a.T @ target + ridge * prior)
    solution = kprune.refit_output_projection(student, teacher, sublayer, samples, kept=kept, damping=damping,
                                              ridge_prior=ridge_prior)
    torch.testing.assert_close(solution.double(), want, atol=2e-4, rtol=2e-3)
    torch.testing.assert_close(dense.weight[:, kept].double(), want.T, atol=2e-4, rtol=2e-3)
    others = [i for i in range(30) if i not in kept]
    assert float(dense.weight[:, others].detach().abs().sum()) == 0.0
    with pytest.raises(kprune.ConfigError, match="outside"):
        kprune.refit_output_projection(student, teacher, sublayer, samples, kept=[30])
    tuner = kprune.tuner_for(student, teacher, samples)
    with pytest.raises(kprune.ConfigError, match="in order"):
        tuner.statistics(2)


def compose_by_hand(model, samples, task, reduction, config):
    """K-prune from the public API: measure, search, apply masks, re-fit; sublayer by sublayer; then the head."""
    teacher, student = model, copy.deepcopy(model)
    knowledge = kprune.measure_knowledge(teacher, samples, task, config=config)
    head_cost, neuron_cost = knowledge.head_flops, knowledge.neuron_flops
    heads, neurons = EncoderAdapter(model).units_kept()
    remaining = (1 - reduction) * sum(h * head_cost + n * neuron_cost for h, n in zip(heads, neurons))
    kept_per_step = []
    for k in range(2 * len(heads)):
        if k > 0:
            knowledge = kprune.measure_knowledge(student, samples, task, teacher=teacher, config=config)
        head_scores, neuron_scores = knowledge.scores(config)
        per_sublayer = [s for pair in zip(head_scores, neuron_scores) for s in pair][k:]
        costs = [head_cost if (k + i) % 2 == 0 else neuron_cost for i in range(len(per_sublayer))]
        pooled = torch.cat(per_sublayer)
        unit_costs = torch.cat([torch.full_like(s, c, dtype=torch.float64) for s, c in zip(per_sublayer, costs)])
        kept_mask, _ = kprune.search_kept(pooled, unit_costs, remaining)
        kept = torch.nonzero(kept_mask[:per_sublayer[0].numel()]).flatten().tolist()
        kept_per_step.append(kept)
        remaining -= len(kept) * costs[0]
        masks = kprune.UnitMasks.ones(student)
        values = masks.heads[k // 2] if k % 2 == 0 else masks.neurons[k // 2]
        values.zero_()[kept] = 1.0
        kprune.apply_masks(student, masks, inplace=True)
        if kept:
            resolved = config.for_task(task, 1)
            kprune.refit_output_projection(student, teacher, k, samples, damping=config.damping,
                                           batch_size=config.batch_size, ridge_prior=resolved.ridge_prior,
                                           damping_search=resolved.damping_search, seed=config.seed)
    if config.head_refit:   # this version's default: the head's output layer re-fitted last
        kprune.refit_task_head(student, teacher, samples, batch_size=config.batch_size, seed=config.seed)
    return kept_per_step, student


@pytest.mark.parametrize("family,head,groups", [("bert", "classification", "batch"),
                                                ("distilbert", "qa", "sample"),
                                                ("roberta", "regression", "batch"),
                                                ("modernbert", "qa", "sample")])
@pytest.mark.parametrize("refit", [{"head_refit": False}, {}, {"damping_search": True, "ridge_prior": "original"}],
                         ids=["paper-refit", "default", "held-out-refit"])
def test_the_api_composed_by_hand_equals_prune(family, head, groups, refit):
    model = tiny_model(family, head, layers=3, seed=13)
    samples = random_samples(20, seed=14)
    config = kprune.KPruneConfig(progress=False, batch_size=6, gradient_groups=groups, **refit)
    pruner = kprune.KPruner(model, samples, head, 0.6, config)
    result = pruner.run()
    kept, student = compose_by_hand(model, samples, head, 0.6, config)
    assert kept == [step.kept for step in pruner.steps_done]
    assert 0 < sum(map(len, kept)) < 3 * (4 + 40)
    ids, mask = padded_batch(samples, model.config.pad_token_id or 0)
    torch.testing.assert_close(model_outputs(student, ids, mask), model_outputs(result.model, ids, mask),
                               atol=1e-4, rtol=1e-3)


def test_applied_masks_save_and_reload(tmp_path):
    model = tiny_model("xlm-roberta", "classification", layers=2, seed=15)
    masks = _random_masks(model, seed=16)
    ids, mask = padded_batch(random_samples(5), 1)
    with kprune.masked(model, masks):
        want = model_outputs(model, ids, mask)
    kprune.save_pruned(kprune.apply_masks(model, masks), tmp_path / "out")
    torch.testing.assert_close(model_outputs(kprune.load_pruned(tmp_path / "out"), ids, mask), want,
                               atol=2e-5, rtol=1e-4)


@pytest.mark.skipif(not kprune_ext.EXTENSION_LOADED, reason="compiled extension not built")
def test_masked_gradients_flow_through_the_compiled_ops():
    model = tiny_model("bert", "qa", layers=2, seed=17)
    masks = kprune.UnitMasks.ones(model, requires_grad=True)
    ids, mask = padded_batch(random_samples(3), 0)
    with kprune.masked(model, masks):
        out = model(input_ids=ids, attention_mask=mask)
        (out.start_logits.sum() + out.end_logits.square().sum()).backward()
    live = kprune.UnitMasks([m.detach().clone().requires_grad_() for m in masks.heads],
                            [m.detach().clone().requires_grad_() for m in masks.neurons])
    hooks = HookMasks(model, live)
    out = model(input_ids=ids, attention_mask=mask)
    (out.start_logits.sum() + out.end_logits.square().sum()).backward()
    hooks.remove()
    for got, want in zip(masks.heads + masks.neurons, live.heads + live.neurons):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-4, rtol=1e-3)
