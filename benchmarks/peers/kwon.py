"""Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers" (NeurIPS), on kprune's
building blocks, behind K-prune's interface.

Three stages, all on the original (unpruned) model's masks, written from the paper's description:

1. Fisher-based mask search. One mask variable per head and per neuron; per-sample gradients
   g_s = dL_s/dm of the task loss against the true labels (cross-entropy; squared error for
   regression; mean of the start and end cross-entropies for QA) at m = 1. The diagonal of the
   empirical Fisher, I_ii = sum_s g_si^2, is each unit's importance. Under the FLOPs budget the
   search tries every number of kept heads h (the h most important heads over all layers), fills the
   rest of the budget with the most important neurons, and keeps the choice whose kept importance
   is largest.
2. Mask rearrangement. Per layer and unit type, the number of pruned units is kept and the pruned
   set is re-chosen to lower (1-m)^T I_l (1-m), I_l = G_l^T G_l the layer's full (block-diagonal)
   empirical Fisher, i.e. the squared norm of the summed gradients of the pruned units. It starts from
   the least important units (the search's choice) and visits the others by increasing importance:
   each joins the set, then the member whose removal leaves the smallest objective leaves it (as
   their code does; benchmarks/compare_kwon.py checks the two agree).
3. Mask tuning. Sublayer by sublayer, bottom to top, the kept units' mask values are refitted by
   linear least squares so that the pruned sublayer's pre-LayerNorm output (on the pruned model's
   own input) matches the unpruned model's. The objective is quadratic in m with
   A_ij = sum_tokens (W_i a_i).(W_j a_j) and b_i = sum_tokens (W_i a_i).(Y - X - bias): for neurons
   A = (a^T a) * (W^T W) elementwise, for heads the block sums of that over each head's dimensions.
   The tuned masks are folded into the output projection's columns (exact). A solution that is not
   finite or has |m| > max_mask is discarded (the sublayer keeps m = 1), as the paper's code guards
   against ill-conditioned solves.

The model is then pruned physically (kprune.apply_masks), so its latency is real. Everything runs on
kprune's public mask-level API: the Fisher gradients come from kprune.mask_gradients (the model under
kprune.masked, the compiled masked ops), the tuning statistics from kprune.SublayerTuner.
"""
from __future__ import annotations

import logging
import time

import torch
from tqdm.auto import tqdm

import kprune

from ._common import (LabelledBatch, build_report, check_args, full_flops, labelled_batches, per_sample_task_loss,
                      prune_to, task_logits, unit_costs)

logger = logging.getLogger(__name__)


def fisher_gradients(model, batches: list[LabelledBatch], task: str,
                     progress: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-sample mask gradients at m = 1: ([samples, heads] per layer, [samples, neurons] per layer)."""
    pseudo = not batches[0].labels and task != "regression"
    dicts = []
    for batch in batches:
        entry = batch.as_dict()
        if pseudo:   # unlabelled: the unpruned model's argmax stands in for the labels
            with torch.no_grad():
                inputs = {k: v for k, v in entry.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                entry["teacher_logits"] = task_logits(model(**inputs), task)
        dicts.append(entry)

    def loss_fn(outputs, batch):
        return per_sample_task_loss(task_logits(outputs, task), batch, task, batch.get("teacher_logits"))

    bar = tqdm(dicts, desc="Kwon: Fisher", disable=not progress, leave=False)
    return kprune.mask_gradients(model, bar, loss_fn)


def search_mask(head_importance: torch.Tensor, neuron_importance: torch.Tensor, budget: float,
                head_cost: float, neuron_cost: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept-unit boolean masks ([L, H], [L, F]) maximising kept importance within the budget.

    For every number of kept heads, the most important heads are kept and the most important neurons
    fill what is left of the budget (with one cost per unit type this is optimal for that count)."""
    h_sorted = head_importance.flatten().double().sort(descending=True)
    n_sorted = neuron_importance.flatten().double().sort(descending=True)
    h_prefix = torch.cat([h_sorted.values.new_zeros(1), h_sorted.values.cumsum(0)])
    n_prefix = torch.cat([n_sorted.values.new_zeros(1), n_sorted.values.cumsum(0)])
    total_neurons = n_sorted.values.numel()
    best = (-float("inf"), 0, 0)
    for heads in range(h_sorted.values.numel() + 1):
        left = budget - heads * head_cost
        if left < 0:
            break
        neurons = min(total_neurons, int(left // neuron_cost))
        kept = float(h_prefix[heads] + n_prefix[neurons])
        if kept > best[0]:
            best = (kept, heads, neurons)
    _, heads, neurons = best
    head_mask = torch.zeros(head_importance.numel(), dtype=torch.bool)
    head_mask[h_sorted.indices[:heads]] = True
    neuron_mask = torch.zeros(neuron_importance.numel(), dtype=torch.bool)
    neuron_mask[n_sorted.indices[:neurons]] = True
    return head_mask.view_as(head_importance), neuron_mask.view_as(neuron_importance)


def rearrange(kept: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """One layer's kept mask [units] re-chosen with the same count, lowering (1-m)^T G^T G (1-m)
    (grads G: [samples or batches, units]) by the swap procedure of the module docstring."""
    units = kept.numel()
    num_pruned = units - int(kept.sum())
    if num_pruned == 0 or num_pruned == units:
        return kept.clone()
    vectors = grads.double().t()                                   # [units, samples]
    order = vectors.square().sum(1).argsort().tolist()             # least important first
    pruned = order[:num_pruned]
    for unit in order[num_pruned:]:
        pruned.append(unit)
        members = vectors[pruned]
        left_out = (members.sum(0)[None, :] - members).square().sum(1)   # objective without each member
        del pruned[int(left_out.argmin())]
    new = torch.ones(units, dtype=torch.bool)
    new[pruned] = False
    return new


def pruned_objective(kept: torch.Tensor, grads: torch.Tensor) -> float:
    """(1-m)^T G^T G (1-m) for a kept mask [units] and grads [samples, units]."""
    return float((grads.double()[:, ~kept].sum(1)).square().sum())


def tune_masks(teacher, student, samples, damping: float = 1e-4, max_mask: float = 10.0,
               batch_size: int = 32, progress: bool = False) -> list[dict]:
    """Layer-wise least-squares mask tuning of ``student`` (physically pruned) towards ``teacher``,
    folded into the student's output projections in place. Returns per sublayer the mean squared
    reconstruction error per token before and after tuning."""
    tuner = kprune.tuner_for(student, teacher, samples, batch_size)
    layers = kprune.encoder_layers(student)
    log = []
    for k in tqdm(range(tuner.num_sublayers), desc="Kwon: mask tuning", disable=not progress, leave=False):
        view = layers[k // 2]
        out_proj = view.attn_out if k % 2 == 0 else view.ffn_out
        width = out_proj.in_features
        unit_width = view.head_size if k % 2 == 0 else 1
        entry = {"sublayer": k, "units": width // unit_width}
        if width > 0:
            stats = tuner.statistics(k)
            gram, cross = stats.gram.double(), stats.cross.double()
            w = out_proj.weight.detach().double()                      # [d, width]
            per_dim = gram * (w.t() @ w)                               # [width, width]
            units = width // unit_width
            a = per_dim.view(units, unit_width, units, unit_width).sum((1, 3))
            b = (cross * w.t()).sum(1).view(units, unit_width).sum(1)

            def error(m: torch.Tensor) -> float:
                return (stats.target_sq - 2 * float(m @ b) + float(m @ a @ m)) / stats.num_tokens

            ones = torch.ones(units, dtype=torch.float64)
            lam = damping * float(a.diagonal().mean()) if units else 0.0
            try:
                m = torch.linalg.solve(a + lam * torch.eye(units, dtype=torch.float64), b)
            except RuntimeError:
                m = torch.full((units,), float("nan"), dtype=torch.float64)
            accepted = bool(torch.isfinite(m).all()) and float(m.abs().max()) <= max_mask
            entry["error_before"] = error(ones)
            if accepted:
                entry["error_after"] = error(m)
                accepted = entry["error_after"] <= entry["error_before"]
            if not accepted:
                m = ones
                entry["error_after"] = entry["error_before"]
            entry["accepted"] = accepted
            with torch.no_grad():
                scale = m.repeat_interleave(unit_width).to(out_proj.weight.dtype)
                out_proj.weight.mul_(scale[None, :])
        log.append(entry)
        tuner.advance(k)
    tuner.release()
    return log


def prune_kwon(model, samples, task_kind: str, flops_reduction: float, seed: int = 0, *,
               rearrangement: bool = True, mask_tuning: bool = True, batch_size: int = 32,
               damping: float = 1e-4, max_mask: float = 10.0, progress: bool = True) -> kprune.PruneResult:
    """Prune ``model`` (left unchanged) with Kwon et al.'s search, rearrangement and mask tuning.

    samples: features with labels ("labels", or "start_positions"/"end_positions" for QA), as
    :func:`kprune.data.sample_features` gives. ``seed`` is unused (the method is deterministic given
    the sample) and accepted for a uniform interface.
    """
    check_args(task_kind, flops_reduction)
    task = task_kind
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    model.eval()
    pad = getattr(model.config, "pad_token_id", None) or 0
    batches = labelled_batches(samples, batch_size, pad)
    num_samples = sum(b.input_ids.shape[0] for b in batches)
    num_tokens = sum(b.num_tokens for b in batches)
    seq_len = num_tokens / num_samples
    head_cost, neuron_cost = unit_costs(model, seq_len)
    budget = (1.0 - flops_reduction) * full_flops(model, seq_len)

    timer = time.perf_counter()
    head_grads, neuron_grads = fisher_gradients(model, batches, task, progress)
    seconds["fisher"] = time.perf_counter() - timer

    timer = time.perf_counter()
    head_importance = torch.stack([g.double().square().sum(0) for g in head_grads])
    neuron_importance = torch.stack([g.double().square().sum(0) for g in neuron_grads])
    head_mask, neuron_mask = search_mask(head_importance, neuron_importance, budget, head_cost, neuron_cost)
    seconds["search"] = time.perf_counter() - timer

    timer = time.perf_counter()
    if rearrangement:
        head_mask = torch.stack([rearrange(head_mask[l], head_grads[l]) for l in range(len(head_grads))])
        neuron_mask = torch.stack([rearrange(neuron_mask[l], neuron_grads[l]) for l in range(len(neuron_grads))])
    seconds["rearrange"] = time.perf_counter() - timer
    del head_grads, neuron_grads

    work = prune_to(model, [torch.nonzero(m).flatten().tolist() for m in head_mask],
                    [torch.nonzero(m).flatten().tolist() for m in neuron_mask])
    timer = time.perf_counter()
    tuning = tune_masks(model, work, samples, damping, max_mask, batch_size, progress) if mask_tuning else []
    seconds["tune"] = time.perf_counter() - timer
    seconds["total"] = time.perf_counter() - started
    config = {"method": "kwon", "rearrangement": rearrangement, "mask_tuning": mask_tuning,
              "batch_size": batch_size, "damping": damping, "max_mask": max_mask,
              "labels": sorted(batches[0].labels) if batches else []}
    report = build_report(task, model, work, flops_reduction, num_samples, num_tokens, seconds, config)
    report["mask_tuning"] = tuning
    return kprune.PruneResult(work, report)
