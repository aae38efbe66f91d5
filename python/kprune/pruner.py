"""The K-prune driver: 2L steps, bottom to top, in bounded memory.

At step k the student's hidden states at the input of sublayer k are cached for every batch; one
pass runs sublayers k..2L-1 (and, from k = 1 on, backward to their activations) to measure
knowledge. Then the mask search picks the units of sublayer k, surgery removes the pruned ones, a
pass over the pruned sublayer accumulates the least-squares statistics of the kept units while the
teacher advances through sublayer k, weight tuning re-fits the output projection, and the student
cache advances one sublayer.
"""
from __future__ import annotations

import copy
import logging
import resource
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

import kprune_ext
from kprune.adapters import EncoderAdapter, check_head
from kprune.config import KPruneConfig, check_reduction, check_task_kind
from kprune.distributed import Collective, local_batches
from kprune.errors import ConfigError, NumericalError
from kprune.flops import head_flops, model_flops, neuron_flops
from kprune.head_refit import head_output_layer, refit_head
from kprune.heap import HeapTrimmer
from kprune.heldout import refit_selecting_damping, sample_folds
from kprune.knowledge import UnitStatistics, distillation_loss, unit_scores
from kprune.precision import measuring_in
from kprune.progress import RunProgress, step_costs
from kprune.samples import Batch, GradientGroups, normalise_samples
from kprune.saving import SaveBudget, run_sublayer_saving, saved_bytes
from kprune.search import search_kept
from kprune.sharing import own_parameters, shared_copy
from kprune.sublayers import run_sublayer, sublayer_backward, sublayer_output
from kprune.tuning import SublayerTuner, out_projection
from kprune.views import FixedViews
from kprune.surgery import prune_heads, prune_neurons

logger = logging.getLogger(__name__)


@dataclass
class PruneResult:
    model: nn.Module
    report: dict


@dataclass
class StepResult:
    """What one step decided, for those who watch the run."""

    sublayer: int
    layer: int
    kind: str            # "attention" or "ffn"
    kept: list[int]
    total: int
    threshold: float
    remaining_budget: float


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class KPruner:
    """Stepwise K-prune: iterate :meth:`steps` to watch each sublayer, or call :meth:`run`.

    process_group: an initialised torch.distributed group whose ranks all call with the same model,
    sample and settings; each measures its shard (balanced by tokens) and statistics are summed, so every
    rank ends with the model one process would produce (:mod:`kprune.distributed`). None: one process."""

    def __init__(self, model: nn.Module, samples, task: str = "classification", flops_reduction: float = 0.5,
                 config: KPruneConfig | None = None, process_group=None):
        self.collective = Collective(process_group)
        with self.collective.guard("checking the settings and the sample"):
            self.task = check_task_kind(task)
            self.flops_reduction = check_reduction(flops_reduction)
            self.teacher = EncoderAdapter(model)
            self.config = (config or KPruneConfig()).validate().for_task(self.task, self.teacher.head_size)
            check_head(self.teacher, self.task)
            vocab = getattr(model.config, "vocab_size", None)
            pad = getattr(model.config, "pad_token_id", None) or 0
            self.samples = normalise_samples(samples, vocab)
        settings = dict(self.config.to_dict(), task=self.task, flops_reduction=self.flops_reduction, device=None,
                        progress=None)
        self.collective.check_same_inputs(model, self.samples, settings)
        self.device = torch.device(self.config.device)
        # this rank's share of the sample; counts, lengths and gradient groups are the whole sample's
        self.batches: list[Batch] = local_batches(self.samples, self.collective, self.config.compute_batch, pad,
                                                  self.device, self.config.compute_batch_tokens)
        self.num_samples = len(self.samples)
        # the paper's batch-mean gradients, over a seeded random partition whatever the compute batches
        self.groups = GradientGroups.random(self.num_samples, self.config.batch_size, self.config.seed) \
            if self.config.gradient_groups == "batch" else None
        self.num_tokens = sum(s["input_ids"].numel() for s in self.samples)
        self.seq_len = self.num_tokens / self.num_samples
        self._input_model = model
        self.seconds: dict[str, float] = defaultdict(float)
        self.steps_done: list[StepResult] = []
        self.bytes_per_step: list[int] = []
        self.progress = RunProgress([], enabled=False)
        self.heap = HeapTrimmer()   # freed memory goes back to the system as the run goes
        self.extras: dict = {}   # what the candidate switches chose (damping_search, head_refit), for the report

    # -- setup ------------------------------------------------------------------------------------

    def _setup(self) -> None:
        started = time.perf_counter()
        self._was_training = self._input_model.training
        self._input_model.eval()
        # shares the input model's weights until surgery replaces them (own_parameters at the end)
        student_model = shared_copy(self._input_model).to(self.device).eval()
        student_model.requires_grad_(False)
        if self.device != next(self._input_model.parameters()).device:
            self.teacher = EncoderAdapter(copy.deepcopy(self._input_model).to(self.device).eval())
        self.student = EncoderAdapter(student_model)
        t, d = self.teacher, self.teacher.hidden_size
        self.unit_flops = (head_flops(self.seq_len, d, t.head_size, t.relative),
                           neuron_flops(self.seq_len, d, t.arch.gated_ffn))
        heads, neurons = t.units_kept()
        self.flops_before = model_flops(heads, neurons, self.seq_len, d, t.head_size, t.relative, t.arch.gated_ffn)
        self.budget = (1.0 - self.flops_reduction) * self.flops_before
        self.remaining = self.budget
        self.params_before = count_parameters(self._input_model)
        self.tuner = SublayerTuner(self.student, self.teacher, self.batches, self.collective, teacher_in_place=True)
        self.tuner.on_batch = self._batch_done
        self.teacher_logits: list[torch.Tensor] = []
        self.seconds["setup"] += time.perf_counter() - started

    # -- one step ---------------------------------------------------------------------------------

    def _widths(self, k: int) -> tuple[int, int, float, float]:
        """(dimensions, dimensions per unit, FLOPs per unit, score multiplier) of student sublayer k."""
        view = self.student.layer(k // 2)
        if k % 2 == 0:
            return view.num_heads * view.head_size, view.head_size, self.unit_flops[0], self.config.mu
        return view.num_neurons, 1, self.unit_flops[1], 1.0

    def _measure(self, k: int) -> dict[int, UnitStatistics]:
        """One pass over the sample: the knowledge of every unit in sublayers >= k."""
        cfg = self.config
        num_sub = 2 * self.student.num_layers
        with_grad = k > 0 and cfg.use_pred and cfg.lambda_pred > 0
        grouped = with_grad and self.groups is not None
        groups = self.groups.count if grouped else 0
        stats = {j: UnitStatistics.zeros(self._widths(j)[0], self.device, groups) for j in range(k, num_sub)}
        pass_ = self._recompute_pass if with_grad and cfg.recompute else self._graph_pass
        precision = self.measure_precision(k)
        self.progress.phase("knowledge", len(self.batches))
        student, self.student = self.student, FixedViews(self.student)   # no surgery during the pass
        try:
            with precision, self.collective.guard(f"measuring knowledge at sublayer {k}"):
                for index, batch in enumerate(self.batches):
                    offsets = batch.token_offsets().to(self.device)
                    row_groups = self.groups.of_rows(batch).to(self.device) if grouped else None
                    pass_(k, index, batch, self.tuner.student_cache[index], with_grad, stats, (offsets, row_groups))
                    self._batch_done()
        finally:
            self.student = student
        self.collective.all_reduce([tensor for st in stats.values() for tensor in st.sums()])
        return {j: st.finish() for j, st in stats.items()}

    def measure_precision(self, k: int):
        """Step k's knowledge pass runs within: :func:`kprune.precision.measuring_in` ``measure_dtype``, from
        k = 1 (the teacher's outputs are taken at k = 0, in float32)."""
        return measuring_in("float32" if k == 0 else self.config.measure_dtype, self.device.type)

    def _batch_done(self) -> None:
        self.progress.tick()
        self.heap.poll()

    def _loss(self, logits: torch.Tensor, index: int, batch: Batch) -> torch.Tensor:
        """The batch's distillation loss, scaled so that its gradients are the paper's batch means
        (or, with per-sample groups, per-sample gradients on the same scale)."""
        cfg = self.config
        per_sample = distillation_loss(logits.float(), self.teacher_logits[index], self.task, cfg.temperature,
                                       batch.key_mask, cfg.embedding_scale)
        if self.groups is None:
            return per_sample.sum() / cfg.batch_size
        return (per_sample * self.groups.weights(batch).to(per_sample)).sum()

    def _check_logits(self, logits: torch.Tensor, k: int, index: int) -> None:
        if not torch.isfinite(logits).all():
            raise NumericalError(f"the model produced non-finite outputs at sublayer {k} (batch {index}); "
                                 "check the model's weights and the input ids")

    def _graph_pass(self, k, index, batch, x, with_grad, stats, grouping) -> None:
        """Forward through sublayers >= k keeping the autograd graph, then one backward to every act.
        Fast, but the graph of one batch spans all sublayers above k."""
        num_sub = 2 * self.student.num_layers
        real = batch.key_mask
        with torch.set_grad_enabled(with_grad):
            hidden = x.detach().requires_grad_(with_grad)
            acts = []
            for j in range(k, num_sub):
                out = run_sublayer(self.student, j, hidden, real)
                if with_grad:
                    acts.append(out.act)
                else:  # no gradients: take the statistics now rather than holding every act
                    stats[j].add(batch.real_rows(out.act), None, *grouping)
                hidden = out.output
            logits = self.student.head(hidden, real)
        self._check_logits(logits, k, index)
        if k == 0:  # the student is still the teacher: its outputs are the teacher's
            self.teacher_logits.append(logits.detach())
        if with_grad:
            grads = torch.autograd.grad(self._loss(logits, index, batch), acts, allow_unused=True)
            for j, act, grad in zip(range(k, num_sub), acts, grads):
                stats[j].add(batch.real_rows(act.detach()), None if grad is None else batch.real_rows(grad), *grouping)

    def _recompute_pass(self, k, index, batch, x, with_grad, stats, grouping) -> None:
        """Forward without a graph keeping each sublayer's pre-LayerNorm sum, then backward one sublayer at
        a time (:func:`sublayer_backward`: the part below the output projection runs again, not the projection;
        a sublayer's input is its predecessor's LayerNorm, recomputed). A batch's memory grows by one [tokens, d]
        tensor per sublayer above k, plus the inner activations of the sublayers that fit in ``saved_mb``
        (:mod:`kprune.saving`; those do not run again), not by every sublayer's inner activations."""
        num_sub = 2 * self.student.num_layers
        real = batch.key_mask
        saved, slots = [], None   # slots: every sublayer's pre-LayerNorm sum in one block (no heap holes between)
        budget = SaveBudget(self.config.saved_mb)   # sublayers that fit keep what their backward needs
        with torch.no_grad():
            hidden = x
            for j in range(k, num_sub):
                if j > k and budget.take(saved_bytes(self.student, j, hidden)):
                    out, inner = run_sublayer_saving(self.student, j, hidden, real)
                else:
                    out, inner = run_sublayer(self.student, j, hidden, real), None
                if slots is None:
                    slots = out.pre_norm.new_empty((num_sub - k, *out.pre_norm.shape))
                saved.append((slots[j - k].copy_(out.pre_norm), out.act if j == k else None, inner))
                hidden = out.output
                del out   # an FFN's act would live on through the next sublayer
        with torch.enable_grad():
            top = hidden.detach().requires_grad_()
            logits = self.student.head(top, real)
            self._check_logits(logits, k, index)
            (grad_hidden,) = torch.autograd.grad(self._loss(logits, index, batch), [top])
        for j in reversed(range(k, num_sub)):
            pre_norm, act, inner = saved.pop()
            # the input, where the backward needs it: x, or the LayerNorm of the sum below (recomputed)
            xj = x if j == k else None if inner is not None else sublayer_output(self.student, j - 1, saved[-1][0])
            act, grad_act, grad_hidden = sublayer_backward(self.student, j, xj, pre_norm, real, grad_hidden, act,
                                                           need_input_grad=j > k, saved=inner)
            stats[j].add(batch.real_rows(act), batch.real_rows(grad_act), *grouping)
            del act, grad_act, inner   # not alive through the next sublayer's backward

    def _scores(self, k: int, stats: dict[int, UnitStatistics]) -> dict[int, torch.Tensor]:
        cfg = self.config
        lp = cfg.lambda_pred if cfg.use_pred else 0.0
        lr = cfg.lambda_rep if cfg.use_rep else 0.0
        scores = {}
        for j, st in stats.items():
            _, unit_width, unit_flops, multiplier = self._widths(j)
            weight = out_projection(self.student, j).weight
            scores[j] = unit_scores(st, weight, unit_width, self.num_samples, self.num_tokens, unit_flops,
                                    lp, lr, multiplier)
        return scores

    def _tune_and_advance(self, k: int, kept: torch.Tensor) -> None:
        """Remove sublayer k's pruned units, re-fit its output projection on the kept ones (KPWT,
        :mod:`kprune.tuning`) and advance both hidden-state caches through it.

        The Gram statistics are accumulated on the already pruned sublayer, so they cost O(kept^2)
        rather than O(units^2); the teacher advances through sublayer k in the same pass.
        """
        if k % 2 == 0:
            prune_heads(self.student, k // 2, kept)
        else:
            prune_neurons(self.student, k // 2, kept)
        timer = time.perf_counter()
        if self.config.weight_tuning and kept.numel() > 0:
            self.progress.phase("tuning", len(self.batches))
            if self.config.damping_search:
                _, chosen = refit_selecting_damping(self.tuner, k, sample_folds(self.num_samples, self.config.seed),
                                                    self.config.damping, self.config.ridge_prior)
                self.extras.setdefault("damping_search", []).append(chosen)
            else:
                self.tuner.refit(k, damping=self.config.damping, ridge_prior=self.config.ridge_prior)
        self.seconds["tune"] += time.perf_counter() - timer
        timer = time.perf_counter()
        with self.collective.guard(f"advancing past sublayer {k}"):
            self.tuner.advance(k)
        self.seconds["advance"] += time.perf_counter() - timer

    def _step(self, k: int) -> StepResult:
        num_sub = 2 * self.student.num_layers
        timer = time.perf_counter()
        stats = self._measure(k)
        self.seconds["measure"] += time.perf_counter() - timer

        timer = time.perf_counter()
        scores = self._scores(k, stats)
        pooled = torch.cat([scores[j] for j in range(k, num_sub)])
        costs = torch.cat([torch.full_like(scores[j], self._widths(j)[2], dtype=torch.float64)
                           for j in range(k, num_sub)])
        kept_mask, threshold = search_kept(pooled, costs, self.remaining)
        total = scores[k].numel()
        kept = torch.nonzero(kept_mask[:total]).flatten()   # sublayer k's units come first in the pool
        self.remaining -= kept.numel() * self._widths(k)[2]
        self.seconds["search"] += time.perf_counter() - timer

        self._tune_and_advance(k, kept)
        result = StepResult(k, k // 2, "attention" if k % 2 == 0 else "ffn", kept.tolist(), total, threshold,
                            self.remaining)
        logger.info("sublayer %d (layer %d %s): kept %d of %d", k, result.layer, result.kind, len(result.kept), total)
        return result

    # -- public -----------------------------------------------------------------------------------

    def steps(self) -> Iterator[StepResult]:
        """Run the 2L steps, yielding after each; the pruned model is :attr:`model` afterwards."""
        started = time.perf_counter()
        with self.collective.guard("setting up"):
            self._setup()
        num_sub = 2 * self.teacher.num_layers
        cfg = self.config
        self.progress = RunProgress(step_costs(num_sub, cfg.use_pred and cfg.lambda_pred > 0), cfg.progress)
        self.tuner.on_batch = self._batch_done
        try:
            for k in range(num_sub):
                self.progress.start(k)
                sent = self.collective.bytes
                result = self._step(k)
                self.bytes_per_step.append(self.collective.bytes - sent)
                self.steps_done.append(result)
                self.progress.finish(f"layer {result.layer} {result.kind} kept {len(result.kept)}/{result.total}")
                yield result
            if cfg.head_refit:
                timer = time.perf_counter()
                own_parameters(head_output_layer(self.student), self._input_model)   # refit in place below
                self.extras["head_refit"] = refit_head(self.student, self.tuner.student_cache, self.batches,
                                                       self.teacher_logits, sample_folds(self.num_samples, cfg.seed),
                                                       self.collective)
                self.seconds["head_refit"] += time.perf_counter() - timer
        finally:
            self.progress.close()
            self._input_model.train(self._was_training)
            if hasattr(self, "tuner"):
                self.tuner.release()
                self.heap.trim()
                own_parameters(self.student.model, self._input_model)
        self.seconds["total"] = time.perf_counter() - started

    @property
    def model(self) -> nn.Module:
        return self.student.model

    def run(self) -> PruneResult:
        for _ in self.steps():
            pass
        return PruneResult(self.model, self.report())

    def report(self) -> dict:
        heads, neurons = self.student.units_kept()
        d, hs = self.student.hidden_size, self.student.head_size
        flops_after = model_flops(heads, neurons, self.seq_len, d, hs, self.student.relative,
                                  self.student.arch.gated_ffn)
        return {
            "task": self.task,
            "architecture": self.student.arch.family,
            "flops_reduction_target": self.flops_reduction,
            "flops_before": self.flops_before,
            "flops_after": flops_after,
            "flops_budget": self.budget,
            "flops_reduction": 1.0 - flops_after / self.flops_before,
            "params_before": self.params_before,
            "params_after": count_parameters(self.model),
            "heads_kept": heads,
            "neurons_kept": neurons,
            "heads_per_layer": self.teacher.original_heads,
            "neurons_per_layer": self.teacher.original_neurons,
            "num_samples": self.num_samples,
            "num_tokens": self.num_tokens,
            "avg_seq_len": self.seq_len,
            "seconds": {key: round(value, 3) for key, value in self.seconds.items()},
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "extension": kprune_ext.EXTENSION_LOADED,
            "config": self.config.to_dict(),
            **self.extras,
            **self.collective.summary(self.bytes_per_step),
        }


def prune(model: nn.Module, samples, task: str = "classification", flops_reduction: float = 0.5,
          config: KPruneConfig | None = None, process_group=None) -> PruneResult:
    """Prune ``model`` (left unchanged) to remove ``flops_reduction`` of its encoder FLOPs.

    samples: unlabelled tokenized samples of the task's training data (a list of dicts with
    ``input_ids`` and optionally ``token_type_ids``/``attention_mask``, or a padded tokenizer batch).
    task: "classification", "regression", "qa", or "embedding" for a bare encoder used as a sentence-embedding
    model (mean pooling + L2 normalisation; predictive knowledge from the squared distance of the teacher's
    and student's embeddings, :func:`kprune.knowledge.embedding_distance`). Returns the physically pruned model and a report.
    process_group: an initialised torch.distributed group to prune data-parallel (see :class:`KPruner`).
    """
    return KPruner(model, samples, task, flops_reduction, config, process_group).run()
