"""Measuring without pruning: knowledge of every head and neuron, and per-sample mask gradients.

Both run the model's own forward under :func:`kprune.masks.masked` (the compiled masked ops) with a
probe on every output projection that sees the kept activations a and, in the backward, the
gradient g at the projection's input; a unit's mask gradient is Σ_tokens a·g over its dimensions.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from kprune.adapters import EncoderAdapter, check_head, mean_pool_normalise
from kprune.config import KPruneConfig, check_task_kind
from kprune.errors import DataError, NumericalError
from kprune.flops import head_flops, neuron_flops
from kprune.knowledge import UnitStatistics, combine_scores, distillation_loss, unit_knowledge
from kprune.masks import UnitMasks, masked
from kprune.samples import GradientGroups, make_batches, normalise_samples
from kprune_ext import ops


@dataclass
class Knowledge:
    """Per-layer knowledge of every unit (DESIGN.md, step 1), with the FLOPs each unit costs.

    Units not computed (mask 0) have zero knowledge. ``head_flops`` / ``neuron_flops``: FLOPs of one
    head / neuron at the sample's average length ``avg_seq_len``."""

    predictive_heads: list[torch.Tensor]          # [heads] per layer
    predictive_neurons: list[torch.Tensor]        # [neurons] per layer
    representational_heads: list[torch.Tensor]
    representational_neurons: list[torch.Tensor]
    head_flops: float
    neuron_flops: float
    num_samples: int
    num_tokens: int
    task: str = "classification"
    head_size: int = 64

    @property
    def avg_seq_len(self) -> float:
        return self.num_tokens / self.num_samples

    def scores(self, config: KPruneConfig | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """K-prune's scores per layer: (heads, neurons), μ·(λ_pred·K_pred + λ_rep·K_rep) / FLOPs for heads."""
        cfg = (config or KPruneConfig()).for_task(self.task, self.head_size)
        lp = cfg.lambda_pred if cfg.use_pred else 0.0
        lr = cfg.lambda_rep if cfg.use_rep else 0.0
        heads = [combine_scores(p, r, self.head_flops, lp, lr, cfg.mu)
                 for p, r in zip(self.predictive_heads, self.representational_heads)]
        neurons = [combine_scores(p, r, self.neuron_flops, lp, lr)
                   for p, r in zip(self.predictive_neurons, self.representational_neurons)]
        return heads, neurons


class _Probe:
    """Sees each masked sublayer's forward; subclasses take what they need from act and its gradient."""

    def __init__(self, need_grad: bool):
        self.need_grad = need_grad
        self.leaves: list[torch.Tensor] = []
        self.real: torch.Tensor | None = None          # [batch * seq] bool, real tokens
        self.offsets: torch.Tensor | None = None       # [groups + 1] over the real tokens

    def begin(self, key_mask: torch.Tensor, offsets: torch.Tensor) -> None:
        self.real, self.offsets, self.leaves = key_mask.reshape(-1), offsets, []

    def mask_values(self, sublayer: int, values: torch.Tensor) -> torch.Tensor:
        if self.need_grad and not values.requires_grad:   # a leaf, so the backward reaches every sublayer
            values = values.detach().requires_grad_()
        if values.requires_grad:
            self.leaves.append(values)
        return values

    def record(self, sublayer: int, act: torch.Tensor, out: torch.Tensor, columns: torch.Tensor,
               weight: torch.Tensor) -> None:
        act = act.detach()
        if self.need_grad and out.requires_grad:
            real = self.real

            def hook(grad_out: torch.Tensor) -> None:
                kept = weight.detach()
                if columns.numel() != kept.shape[1]:   # only the computed units' columns
                    kept = kept.index_select(1, columns)
                grad_in = ops.linear(grad_out[real], kept.t())
                self.add(sublayer, act[real], grad_in.to(act.dtype), columns)
            out.register_hook(hook)
        else:
            self.add(sublayer, act[self.real], None, columns)

    def add(self, sublayer: int, act: torch.Tensor, grad: torch.Tensor | None, columns: torch.Tensor) -> None:
        raise NotImplementedError


class _KnowledgeProbe(_Probe):
    def __init__(self, widths: list[int], device, need_grad: bool, groups: int = 0):
        super().__init__(need_grad)
        self.stats = [UnitStatistics.zeros(w, device, groups) for w in widths]
        self.row_groups: torch.Tensor | None = None      # logical gradient group of each sample (row)

    def add(self, sublayer, act, grad, columns):
        if act.shape[1] == 0:
            return
        full = self.stats[sublayer]
        if columns.numel() == full.act_sq.numel():     # every unit kept, in order
            full.add(act, grad, self.offsets, self.row_groups)
            return
        groups = 0 if full.group_grads is None else full.group_grads.shape[0]
        part = UnitStatistics.zeros(columns.numel(), act.device, groups)
        part.add(act, grad, self.offsets, self.row_groups)
        full.act_sq.index_add_(0, columns, part.act_sq)
        if groups:
            full.group_grads.index_add_(1, columns, part.group_grads)
        else:
            full.grad_sq.index_add_(0, columns, part.grad_sq)


class _GradientProbe(_Probe):
    """Per-sample gradient of each unit's mask: Σ over the sample's tokens and the unit's dimensions of a·g."""

    def __init__(self, widths: list[int], unit_widths: list[int]):
        super().__init__(need_grad=True)
        self.widths, self.unit_widths = widths, unit_widths
        self.batch_grads: dict[int, torch.Tensor] = {}

    def begin(self, key_mask, offsets):
        super().begin(key_mask, offsets)
        self.batch_grads = {}
        lengths = offsets[1:] - offsets[:-1]
        self.sample_of_token = torch.repeat_interleave(torch.arange(lengths.numel(), device=offsets.device), lengths)

    def add(self, sublayer, act, grad, columns):
        samples = self.offsets.numel() - 1
        per_dim = torch.zeros(samples, self.widths[sublayer], dtype=torch.float64, device=act.device)
        if act.shape[1]:
            summed = torch.zeros(samples, columns.numel(), dtype=torch.float64, device=act.device)
            summed.index_add_(0, self.sample_of_token, (act.double() * grad.double()))
            per_dim[:, columns] = summed
        self.batch_grads[sublayer] = per_dim.view(samples, -1, self.unit_widths[sublayer]).sum(-1)


def _accepts(model: nn.Module, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def _task_logits(output, task: str, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    if task == "embedding":
        return mean_pool_normalise(output.last_hidden_state, key_mask)
    if task == "qa":
        return torch.stack([output.start_logits, output.end_logits], -1)
    return output.logits


@contextmanager
def _frozen(model: nn.Module):
    """Parameters without gradients for the duration (only masks and activations need them)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _sublayer_widths(adapter: EncoderAdapter) -> tuple[list[int], list[int]]:
    widths, unit_widths = [], []
    for l in range(adapter.num_layers):
        view = adapter.layer(l)
        widths += [view.num_heads * view.head_size, view.num_neurons]
        unit_widths += [view.head_size, 1]
    return widths, unit_widths


def measure_knowledge(model: nn.Module, samples, task: str = "classification", *, teacher: nn.Module | None = None,
                      masks: UnitMasks | None = None, config: KPruneConfig | None = None) -> Knowledge:
    """Predictive and representational knowledge of every head and neuron of ``model``, in one pass.

    samples: as :func:`kprune.prune` takes them. teacher: the model whose predictions the student
    should keep (default: ``model`` itself without masks). masks: run ``model`` under these
    (:class:`~kprune.masks.UnitMasks`) as the student. When the student is the teacher (no teacher
    and no masks) predictive knowledge is zero, as at the paper's first step, and no backward runs.
    ``config`` supplies temperature, batch_size and gradient_groups (and the λ/μ of :meth:`Knowledge.scores`).
    """
    cfg = (config or KPruneConfig()).validate()
    task = check_task_kind(task)
    adapter = EncoderAdapter(model)
    check_head(adapter, task)
    if masks is not None:
        masks.check(adapter)
    teacher = model if teacher is None else teacher
    predictive = teacher is not model or masks is not None
    device = next(model.parameters()).device
    pad = getattr(model.config, "pad_token_id", None) or 0
    plain = normalise_samples(samples, getattr(model.config, "vocab_size", None))
    batches = make_batches(plain, cfg.compute_batch, pad, device, cfg.compute_batch_tokens)
    groups = GradientGroups.random(len(plain), cfg.batch_size, cfg.seed) if cfg.gradient_groups == "batch" else None
    with_types = _accepts(model, "token_type_ids")

    def inputs(batch):
        out = {"input_ids": batch.input_ids, "attention_mask": batch.key_mask.long()}
        if with_types and batch.token_type_ids is not None:
            out["token_type_ids"] = batch.token_type_ids
        return out

    was_training = model.training
    model.eval()
    widths, unit_widths = _sublayer_widths(adapter)
    probe = _KnowledgeProbe(widths, device, predictive, groups.count if groups is not None and predictive else 0)
    try:
        with _frozen(model), torch.no_grad():
            teacher_logits = [_task_logits(teacher(**inputs(b)), task, b.key_mask).float() for b in batches] if predictive else None
        with _frozen(model), masked(model, masks, probe):
            for index, batch in enumerate(batches):
                probe.begin(batch.key_mask, batch.token_offsets().to(device))
                probe.row_groups = groups.of_rows(batch).to(device) if groups is not None else None
                with torch.set_grad_enabled(predictive):
                    logits = _task_logits(model(**inputs(batch)), task, batch.key_mask)
                    if not torch.isfinite(logits).all():
                        raise NumericalError(f"the model produced non-finite outputs (batch {index})")
                    if predictive and probe.leaves:
                        per_sample = distillation_loss(logits.float(), teacher_logits[index], task, cfg.temperature,
                                                       batch.key_mask, cfg.embedding_scale)
                        loss = per_sample.sum() / cfg.batch_size if groups is None \
                            else (per_sample * groups.weights(batch).to(per_sample)).sum()
                        torch.autograd.grad(loss, probe.leaves, allow_unused=True)
    finally:
        model.train(was_training)
    num_samples = sum(b.input_ids.shape[0] for b in batches)
    num_tokens = sum(b.num_tokens for b in batches)
    knowledge = []
    for k, stats in enumerate(probe.stats):
        stats.finish()
        view = adapter.layer(k // 2)
        weight = view.attn_out.weight if k % 2 == 0 else view.ffn_out.weight
        knowledge.append(unit_knowledge(stats, weight.detach(), unit_widths[k], num_samples, num_tokens))
    seq_len = num_tokens / num_samples
    return Knowledge([kn[0] for kn in knowledge[0::2]], [kn[0] for kn in knowledge[1::2]],
                     [kn[1] for kn in knowledge[0::2]], [kn[1] for kn in knowledge[1::2]],
                     head_flops(seq_len, adapter.hidden_size, adapter.head_size, adapter.relative),
                     neuron_flops(seq_len, adapter.hidden_size, adapter.arch.gated_ffn), num_samples, num_tokens,
                     task, adapter.head_size)


def mask_gradients(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                   loss_fn: Callable[[object, Mapping[str, torch.Tensor]], torch.Tensor],
                   masks: UnitMasks | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-sample gradients of a loss with respect to every head and neuron mask (e.g. for a Fisher).

    batches: dicts of padded tensors with ``input_ids`` and ``attention_mask`` [batch, seq] (and
    ``token_type_ids`` where the model takes them) plus anything ``loss_fn`` reads, such as labels.
    loss_fn(outputs, batch) -> [batch] per-sample losses from the model's outputs. Returns
    ([samples, heads] per layer, [samples, neurons] per layer), in float64, evaluated at ``masks``
    (default all ones; units at 0 run too, so that they get their gradients).
    """
    adapter = EncoderAdapter(model)
    masks = masks if masks is not None else UnitMasks.ones(model)
    masks.check(adapter)
    # masks that require gradients: every unit runs, also those at 0, so each gets its gradient
    masks = UnitMasks([m.detach().clone().requires_grad_() for m in masks.heads],
                      [m.detach().clone().requires_grad_() for m in masks.neurons])
    widths, unit_widths = _sublayer_widths(adapter)
    probe = _GradientProbe(widths, unit_widths)
    with_types = _accepts(model, "token_type_ids")
    collected: list[list[torch.Tensor]] = [[] for _ in widths]
    was_training = model.training
    model.eval()
    try:
        with _frozen(model), masked(model, masks, probe):
            for index, batch in enumerate(batches):
                if "input_ids" not in batch or "attention_mask" not in batch:
                    raise DataError(f"batch {index} needs 'input_ids' and 'attention_mask', got {sorted(batch)}")
                key_mask = batch["attention_mask"].bool()
                lengths = key_mask.sum(1)
                probe.begin(key_mask, torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]))
                names = ("input_ids", "attention_mask") + (("token_type_ids",) if with_types else ())
                with torch.enable_grad():
                    outputs = model(**{k: batch[k] for k in names if k in batch})
                    losses = loss_fn(outputs, batch)
                    if losses.shape != (key_mask.shape[0],):
                        raise DataError(f"loss_fn must return one loss per sample, shape ({key_mask.shape[0]},), "
                                        f"got {tuple(losses.shape)}")
                    torch.autograd.grad(losses.sum(), probe.leaves, allow_unused=True)
                for k in range(len(widths)):
                    collected[k].append(probe.batch_grads.get(k, torch.zeros(key_mask.shape[0], 0, dtype=torch.float64)))
    finally:
        model.train(was_training)
    grads = [torch.cat(parts) if parts else torch.zeros(0, 0) for parts in collected]
    return grads[0::2], grads[1::2]
