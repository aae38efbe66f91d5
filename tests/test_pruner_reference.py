"""KPruner against a naive K-prune written straight from DESIGN.md.

The naive version keeps the model whole and masks units with forward hooks on the output
projections: at every step it runs the full Hugging Face forward on the masked student, takes the
gradient of the distillation loss with respect to the masks by autograd, scores, searches, and
re-fits the kept columns from activations captured by hooks. It shares nothing with kprune's
functional sublayers, caches, recomputation or kernels, so agreeing with it checks all of them.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import kprune
import transformers
from conftest import random_samples, tiny_model
from kprune.samples import make_batches

CFG = dict(lambda_pred=1.0, lambda_rep=2.5e-4, mu=64.0, temperature=2.0, damping=1e-4, embedding_scale=20.0)


def _units(model):
    cfg = model.config
    return cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads, \
        cfg.intermediate_size, cfg.hidden_size


def _sublayer_modules(model, j):
    layer = getattr(model, "bert", model).encoder.layer[j // 2]   # a bare BertModel is its own encoder
    if j % 2 == 0:
        return layer.attention.output.dense, layer.attention.output.LayerNorm
    return layer.output.dense, layer.output.LayerNorm


class Masked:
    """Hooks that multiply each output projection's input by a mask and record what the tests need."""

    def __init__(self, model, masks):
        self.model, self.masks, self.live = model, masks, None
        self.act, self.out, self.pre_norm = {}, {}, {}
        self.handles = []
        for j in range(len(masks)):
            dense, norm = _sublayer_modules(model, j)
            self.handles.append(dense.register_forward_pre_hook(self._mask_hook(j)))
            self.handles.append(dense.register_forward_hook(self._record(self.out, j)))
            self.handles.append(norm.register_forward_pre_hook(self._record_input(self.pre_norm, j)))

    def _mask_hook(self, j):
        def hook(module, args):
            self.act[j] = args[0].detach()
            mask = self.masks[j] if self.live is None else self.live[j]
            return (args[0] * mask,)
        return hook

    @staticmethod
    def _record(store, j):
        def hook(module, args, output):
            store[j] = output.detach()
        return hook

    @staticmethod
    def _record_input(store, j):
        def hook(module, args):
            store[j] = args[0].detach()
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def _kl_loss(student_logits, teacher_logits, temperature):
    log_t = F.log_softmax(teacher_logits / temperature, -1)
    log_s = F.log_softmax(student_logits / temperature, -1)
    return temperature ** 2 * (log_t.exp() * (log_t - log_s)).sum(-1)


def _embedding(model, ids, key):
    """Sentence embedding written out: mean of the real tokens' last hidden states, unit length."""
    hidden = model(input_ids=ids, attention_mask=key.long()).last_hidden_state
    mean = (hidden * key[..., None]).sum(1) / key.sum(1, keepdim=True)
    return mean / mean.norm(dim=-1, keepdim=True)


def _outputs(model, ids, key, task):
    return _embedding(model, ids, key) if task == "embedding" else model(input_ids=ids, attention_mask=key.long()).logits


def _loss(student, teacher, task):
    if task == "embedding":   # squared distance of unit vectors at similarity scale s: s² (2 - 2 cos)
        return CFG["embedding_scale"] ** 2 * (2 - 2 * (student * teacher).sum(-1))
    return _kl_loss(student, teacher, CFG["temperature"])


def naive_kprune(model, samples, reduction, groups, batch_size, seed=0, task="classification"):
    """Returns (kept units per step, masked student, its hooks)."""
    layers, heads, hs, neurons, d = _units(model)
    teacher, student = model, copy.deepcopy(model)
    masks = [torch.ones(heads * hs if j % 2 == 0 else neurons) for j in range(2 * layers)]
    if groups == "sample":
        units = [(s["input_ids"][None], torch.ones(1, s["input_ids"].numel(), dtype=torch.bool)) for s in samples]
        divisor = batch_size
    else:   # the paper's logical batches: a seeded random permutation of the sample, cut in batch_size
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
        units = []
        for start in range(0, len(order), batch_size):
            group = [samples[i] for i in order[start:start + batch_size]]
            b = make_batches(group, len(group))[0]
            units.append((b.input_ids, b.key_mask))
        divisor = None
    n_samples = len(samples)
    n_tokens = sum(s["input_ids"].numel() for s in samples)
    seq = n_tokens / n_samples
    f_head = 6 * seq * d * hs + 4 * seq * seq * hs + 2 * seq * hs * d
    f_neuron = 4 * seq * d
    remaining = (1 - reduction) * layers * (heads * f_head + neurons * f_neuron)
    teacher_hooks = Masked(teacher, [torch.ones_like(m) for m in masks])
    with torch.no_grad():
        teacher_runs = []
        for ids, key in units:
            logits = _outputs(teacher, ids, key, task)
            teacher_runs.append((logits, dict(teacher_hooks.pre_norm)))
    teacher_hooks.remove()
    hooks = Masked(student, masks)
    kept_per_step = []
    for k in range(2 * layers):
        grad_sq = [torch.zeros(m.shape, dtype=torch.float64) for m in masks]
        act_sq = [torch.zeros(m.shape, dtype=torch.float64) for m in masks]
        captured = []
        for (ids, key), (t_logits, t_pre) in zip(units, teacher_runs):
            live = [m.clone().requires_grad_(True) for m in masks]
            hooks.live = live
            logits = _outputs(student, ids, key, task)
            per_sample = _loss(logits, t_logits, task)
            loss = per_sample.sum() / (divisor or per_sample.shape[0])
            grads = torch.autograd.grad(loss, live)
            for j in range(k, 2 * layers):
                grad_sq[j] += grads[j].double().square()
                act_sq[j] += hooks.act[j][key].double().square().sum(0)
            x = hooks.pre_norm[k] - hooks.out[k]
            captured.append((hooks.act[k][key], x[key], t_pre[k][key]))
        hooks.live = None
        # scores, pooled over sublayers >= k, and the longest fitting prefix in score order
        pool = []
        for j in range(k, 2 * layers):
            weight = _sublayer_modules(student, j)[0].weight.detach().double()
            per_dim = CFG["lambda_pred"] * 0.5 * grad_sq[j] / n_samples \
                + CFG["lambda_rep"] * act_sq[j] * weight.square().mean(0) / n_tokens
            width, cost, mult = (hs, f_head, CFG["mu"]) if j % 2 == 0 else (1, f_neuron, 1.0)
            per_unit = mult * per_dim.view(-1, width).mean(1) / cost
            pool += [(float(s), j, u, cost) for u, s in enumerate(per_unit)]
        order = sorted(range(len(pool)), key=lambda i: -pool[i][0])   # stable: ties keep pool order
        spent, kept = 0.0, []
        for i in order:
            if spent + pool[i][3] > remaining:
                break
            spent += pool[i][3]
            if pool[i][1] == k:
                kept.append(pool[i][2])
        kept = sorted(kept)
        kept_per_step.append(kept)
        unit_cost = f_head if k % 2 == 0 else f_neuron
        remaining -= len(kept) * unit_cost
        width = hs if k % 2 == 0 else 1
        cols = torch.tensor([u * width + i for u in kept for i in range(width)], dtype=torch.long)
        dense = _sublayer_modules(student, k)[0]
        if len(cols):
            a = torch.cat([c[0] for c in captured]).double()[:, cols]
            target = torch.cat([c[2] - c[1] for c in captured]).double() - dense.bias.double()
            gram = a.T @ a
            lam = CFG["damping"] * gram.diagonal().mean()
            solution = torch.linalg.solve(gram + lam * torch.eye(len(cols), dtype=torch.float64), a.T @ target)
            with torch.no_grad():
                dense.weight[:, cols] = solution.T.float()
        pruned = torch.ones(masks[k].shape, dtype=torch.bool)
        pruned[cols] = False
        masks[k][pruned] = 0.0
    return kept_per_step, student


@pytest.mark.parametrize("groups", ["sample", "batch"])
@pytest.mark.parametrize("recompute", [True, False])
def test_kpruner_matches_naive_kprune(groups, recompute):
    model = tiny_model("bert", "classification", layers=3, seed=3)
    samples = random_samples(24, seed=11)
    reduction, batch_size = 0.55, 8
    config = kprune.KPruneConfig.paper(progress=False, batch_size=batch_size, gradient_groups=groups, recompute=recompute)
    pruner = kprune.KPruner(model, samples, "classification", reduction, config)
    result = pruner.run()
    want_kept, naive = naive_kprune(model, samples, reduction, groups, batch_size)
    got_kept = [step.kept for step in pruner.steps_done]
    assert got_kept == want_kept
    assert 0 < sum(map(len, want_kept)) < 3 * (4 + 40)   # something kept, something pruned
    ids = torch.stack([s["input_ids"][:3] for s in samples])
    with torch.no_grad():
        want = naive(input_ids=ids).logits
        got = result.model(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("groups", ["sample", "batch"])
def test_kpruner_matches_naive_kprune_on_a_sentence_embedding_model(groups):
    """task='embedding' on a bare encoder: mean pooling, normalisation, squared embedding distance."""
    torch.manual_seed(4)
    model = transformers.BertModel(tiny_model("bert", "classification", layers=3).config).eval()
    samples = random_samples(24, seed=12)
    # the paper's μ and KPWT (the embedding default re-fits by held-out damping, tests/test_candidates.py)
    config = kprune.KPruneConfig(progress=False, batch_size=8, gradient_groups=groups, damping_search=False,
                                 ridge_prior="zero", mu=CFG["mu"], measure_dtype="float32")
    pruner = kprune.KPruner(model, samples, "embedding", 0.55, config)
    result = pruner.run()
    want_kept, naive = naive_kprune(model, samples, 0.55, groups, 8, task="embedding")
    assert [step.kept for step in pruner.steps_done] == want_kept
    assert 0 < sum(map(len, want_kept)) < 3 * (4 + 40)
    assert type(result.model) is transformers.BertModel and result.report["task"] == "embedding"
    ids = torch.stack([s["input_ids"][:3] for s in samples])
    key = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(_embedding(result.model, ids, key), _embedding(naive, ids, key),
                                   atol=2e-4, rtol=1e-3)
