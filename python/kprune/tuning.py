"""Weight tuning (KPWT): re-fit a sublayer's output projection by damped least squares.

For sublayer k, with A the student's activations of the kept units, X the student's input to the
sublayer and Y the teacher's pre-LayerNorm output of it, the new weights solve
(AᵀA + εI)·Wᵀ = Aᵀ(Y − X − b) over the real tokens, bias unchanged (DESIGN.md, step 3).

:class:`SublayerTuner` keeps teacher and student hidden states at the input of the next sublayer and
advances them one sublayer at a time, bottom to top, so a whole run costs one pass per sublayer;
:func:`refit_output_projection` re-fits a single sublayer from scratch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kprune.adapters import EncoderAdapter
from kprune.distributed import Collective
from kprune.errors import ConfigError, NumericalError
from kprune.heldout import refit_selecting_damping, ridge_solve, sample_folds
from kprune.samples import Batch, make_batches, normalise_samples
from kprune.sublayers import run_sublayer, sublayer_act
from kprune.surgery import head_columns
from kprune_ext import ops


@dataclass
class LeastSquaresStats:
    """Sums over the real tokens of one sublayer: AᵀA [k, k], Aᵀ(Y − X − b) [k, d] (float64), Σ‖Y − X − b‖² and
    the count."""

    gram: torch.Tensor
    cross: torch.Tensor
    target_sq: float
    num_tokens: int


def _adapter(model) -> EncoderAdapter:
    return model if isinstance(model, EncoderAdapter) else EncoderAdapter(model)


def out_projection(adapter: EncoderAdapter, sublayer: int) -> nn.Linear:
    view = adapter.layer(sublayer // 2)
    return view.attn_out if sublayer % 2 == 0 else view.ffn_out


def kept_columns(adapter: EncoderAdapter, sublayer: int, kept: Sequence[int] | torch.Tensor | None,
                 device) -> torch.Tensor | None:
    """Input columns of the output projection that belong to the ``kept`` units (None: all)."""
    if kept is None:
        return None
    view = adapter.layer(sublayer // 2)
    units = view.num_heads if sublayer % 2 == 0 else view.num_neurons
    kept = torch.as_tensor(list(kept) if not isinstance(kept, torch.Tensor) else kept, dtype=torch.long)
    if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= units):
        raise ConfigError(f"kept units {kept.tolist()} are outside sublayer {sublayer}'s {units} units")
    kept = kept.unique().to(device)
    return head_columns(kept, view.head_size) if sublayer % 2 == 0 else kept


class SublayerTuner:
    """Teacher and student hidden states at the input of sublayer ``next``, over a fixed set of batches.

    Call :meth:`statistics` or :meth:`refit` for sublayer k (any number of times), then
    :meth:`advance` (k) to move both on, in order k = 0, 1, ..., 2L − 1. The student may change (pruned,
    re-fitted) between calls; the teacher must not.

    teacher_in_place: the first :meth:`statistics` call of a sublayer replaces each batch's teacher hidden
    states by their successors as it goes (the pruner's one call per sublayer: one copy of the teacher's
    states held instead of two); a second call for the same sublayer is then refused. Both caches advance
    batch by batch in :meth:`advance` either way.

    collective (:class:`kprune.distributed.Collective`): with several ranks, ``batches`` are this rank's
    shard; the statistics are summed across ranks and rank 0's solution is used by all.
    """

    def __init__(self, student, teacher, batches: list[Batch], collective: Collective | None = None,
                 teacher_in_place: bool = False):
        self.student, self.teacher = _adapter(student), _adapter(teacher)
        self.batches = batches
        self.collective = collective or Collective()
        self.teacher_in_place = teacher_in_place
        self.next = 0
        with torch.no_grad():
            self.teacher_cache = [self.teacher.embed(b.input_ids, b.token_type_ids) for b in batches]
            same = self.student.model is self.teacher.model
            # embeddings are never pruned: a copy of the teacher starts from the teacher's hidden states
            self.student_cache = list(self.teacher_cache) if same or _same_embeddings(self.student, self.teacher) \
                else [self.student.embed(b.input_ids, b.token_type_ids) for b in batches]
        # the teacher's states past sublayer `next`, once known (teacher_in_place: teacher_cache itself)
        self._next_teacher: list[torch.Tensor] | None = None
        self._cut_short: str | None = None   # set while a pass rewrites the caches: what it was doing
        self.on_batch = None   # called after each batch of a statistics pass (progress bars)
        # sums the held-out half's rows itself (kprune.heldout.FoldStatistics): take(batch, act, target, columns)
        # returns the other rows, reduce() its sums across ranks; the whole sample's sums are the two halves'
        self.held_out = None

    @property
    def num_sublayers(self) -> int:
        return 2 * self.teacher.num_layers

    def _check(self, sublayer: int) -> None:
        if sublayer != self.next:
            raise ConfigError(f"sublayer {sublayer} asked for, but the tuner stands at sublayer {self.next}; "
                              "sublayers are tuned in order, bottom to top")
        if self._cut_short is not None:
            raise ConfigError(f"{self._cut_short} was cut short with part of the hidden states advanced in place: "
                              "start a new tuner")

    def _teacher_input(self, sublayer: int) -> list[torch.Tensor]:
        """The teacher's hidden states at the input of ``sublayer`` (the tuner's current one)."""
        if self.teacher_in_place and self._next_teacher is not None:
            raise ConfigError(f"the teacher's hidden states have moved past sublayer {sublayer}: with "
                              "teacher_in_place=True its statistics are taken once (advance to the next sublayer)")
        return self.teacher_cache

    def statistics(self, sublayer: int, kept: Sequence[int] | torch.Tensor | None = None) -> LeastSquaresStats:
        """AᵀA and Aᵀ(Y − X − b) of sublayer k's (kept) units against the teacher, over every batch."""
        self._check(sublayer)
        out_proj = out_projection(self.student, sublayer)
        device = out_proj.weight.device
        columns = kept_columns(self.student, sublayer, kept, device)
        width = out_proj.in_features if columns is None else columns.numel()
        d = self.student.hidden_size
        # float64 sums of exact products: the tuned weights do not depend on how the sample is cut into compute
        # batches or processes (a float32 sum's rounding would, and a bf16 pass amplifies that at its next cast)
        gram = torch.zeros(width, width, device=device, dtype=torch.float64)
        cross = torch.zeros(width, d, device=device, dtype=torch.float64)
        totals = torch.zeros(2, dtype=torch.float64, device=device)   # Σ‖target‖², tokens
        held = self.held_out
        teacher_in = self._teacher_input(sublayer)
        # the teacher's next hidden states come free with the targets: kept, or written over its inputs
        next_teacher = teacher_in if self.teacher_in_place else [None] * len(self.batches)
        if self.teacher_in_place:
            self._cut_short = f"the statistics pass of sublayer {sublayer}"
        with self.collective.guard(f"accumulating the least-squares statistics of sublayer {sublayer}"):
            for index, batch in enumerate(self.batches):
                real = batch.key_mask
                with torch.no_grad():
                    teacher_out = run_sublayer(self.teacher, sublayer, teacher_in[index], real)
                    next_teacher[index] = teacher_out.output
                    target = batch.real_rows(teacher_out.pre_norm) - batch.real_rows(self.student_cache[index])
                    if out_proj.bias is not None:
                        target -= out_proj.bias
                    totals[0] += target.double().square().sum()
                    totals[1] += int(real.sum())
                    if width:
                        act = batch.real_rows(sublayer_act(self.student, sublayer, self.student_cache[index], real))
                        if held is not None:   # each row's products are summed once, into one half or the other
                            act, target = held.take(batch, act, target, columns)
                        ops.gram_accumulate(act, target, columns, gram, cross)
                if self.on_batch is not None:
                    self.on_batch()
        self.collective.all_reduce([gram, cross, totals])
        if held is not None and width:
            held_gram, held_cross = held.reduce(self.collective, gram, cross)
            gram += held_gram
            cross += held_cross
        self._next_teacher, self._cut_short = next_teacher, None
        return LeastSquaresStats(gram, cross, float(totals[0]), int(totals[1]))

    def refit(self, sublayer: int, kept: Sequence[int] | torch.Tensor | None = None,
              damping: float = 1e-4, ridge_prior: str = "zero") -> torch.Tensor:
        """Re-fit sublayer k's output projection on its (kept) units, in place; returns the new Wᵀ [k, d].

        With ``kept`` given, the other units' columns are set to zero: the model then computes what it
        would with those units masked out (or removed). ``damping`` may be a function of the
        :class:`LeastSquaresStats` and the prior that returns it (chosen once the statistics are in).

        ridge_prior: "zero", the paper's ridge (G + λI)·Wᵀ = C; "original", the ridge pulls towards the kept
        units' current weights P, (G + λI)·Wᵀ = C + λ·P, so that a large damping tends to masking without
        re-fit; a damping of None then keeps P as it is."""
        stats = self.statistics(sublayer, kept)
        out_proj = out_projection(self.student, sublayer)
        columns = kept_columns(self.student, sublayer, kept, out_proj.weight.device)
        prior = None
        if ridge_prior == "original":
            current = out_proj.weight.detach() if columns is None else out_proj.weight.detach()[:, columns]
            prior = current.t().double()
        elif ridge_prior != "zero":
            raise ConfigError(f"ridge_prior={ridge_prior!r}: expected 'zero' or 'original'")
        if callable(damping):
            damping = damping(stats, prior)
        if stats.gram.shape[0] == 0:
            solution = stats.cross
        elif damping is None and prior is not None:
            solution = prior.float()
        else:
            if prior is None:
                solution = ops.solve_damped(stats.gram, stats.cross, damping)
            else:
                solution = ridge_solve(stats.gram, stats.cross, damping, prior).float()
            self.collective.broadcast(solution)   # every rank solved alike; rank 0's copy makes it bit-exact
            if not torch.isfinite(solution).all():
                raise NumericalError(f"weight tuning of sublayer {sublayer} produced non-finite weights")
        with torch.no_grad():
            weight = solution.t().to(out_proj.weight.dtype)
            if columns is None:
                out_proj.weight.copy_(weight)
            else:
                out_proj.weight.zero_()
                out_proj.weight[:, columns] = weight
        return solution

    def advance(self, sublayer: int) -> None:
        """Move both hidden states through sublayer k (the student as it is now)."""
        self._check(sublayer)
        # batch by batch in place: one batch's old states at a time besides the caches
        self._cut_short = f"advancing past sublayer {sublayer}"
        with torch.no_grad():
            if self._next_teacher is None:
                for index, batch in enumerate(self.batches):
                    self.teacher_cache[index] = run_sublayer(self.teacher, sublayer, self.teacher_cache[index],
                                                             batch.key_mask).output
            else:
                self.teacher_cache = self._next_teacher
            for index, batch in enumerate(self.batches):
                self.student_cache[index] = run_sublayer(self.student, sublayer, self.student_cache[index],
                                                         batch.key_mask).output
        self._next_teacher, self._cut_short = None, None
        self.next += 1

    def release(self) -> None:
        self.teacher_cache, self.student_cache = [], []
        self._next_teacher = None


def _same_embeddings(a: EncoderAdapter, b: EncoderAdapter) -> bool:
    ea, eb = a.encoder.embeddings.state_dict(), b.encoder.embeddings.state_dict()
    return ea.keys() == eb.keys() and all(torch.equal(ea[k], eb[k]) for k in ea)


def tuner_for(student: nn.Module, teacher: nn.Module, samples, batch_size: int = 32) -> SublayerTuner:
    """A :class:`SublayerTuner` over ``samples`` (as :func:`kprune.prune` takes them)."""
    config = teacher.config
    plain = normalise_samples(samples, getattr(config, "vocab_size", None))
    device = next(student.parameters()).device
    batches = make_batches(plain, batch_size, getattr(config, "pad_token_id", None) or 0, device)
    return SublayerTuner(student, teacher, batches)


def refit_output_projection(student: nn.Module, teacher: nn.Module, sublayer: int, samples,
                            kept: Sequence[int] | torch.Tensor | None = None, damping: float = 1e-4,
                            batch_size: int = 32, ridge_prior: str = "zero", damping_search: bool = False,
                            seed: int = 0) -> torch.Tensor:
    """Re-fit one sublayer's output projection of ``student`` (in place) towards ``teacher``.

    sublayer: 2l for layer l's attention, 2l + 1 for its FFN. kept: units (heads or neurons, indices
    into the sublayer's current units) to fit on, None for all; the others' columns become zero.
    ridge_prior: "zero" (the paper's ridge) or "original" (towards the kept units' current weights).
    damping_search: choose the damping by 2-fold held-out error among ``damping`` and stronger ones
    (:mod:`kprune.heldout`, the samples split by ``seed``), as ``KPruneConfig.damping_search`` does.
    The student's input to the sublayer comes from its own lower sublayers as they are now.
    Returns the solution Wᵀ [kept dims, d].
    """
    tuner = tuner_for(student, teacher, samples, batch_size)
    if not 0 <= sublayer < tuner.num_sublayers:
        raise ConfigError(f"sublayer={sublayer!r} is outside 0..{tuner.num_sublayers - 1}")
    for k in range(sublayer):
        tuner.advance(k)
    if damping_search:
        folds = sample_folds(sum(batch.sample_index.numel() for batch in tuner.batches), seed)
        return refit_selecting_damping(tuner, sublayer, folds, damping, ridge_prior, kept)[0]
    return tuner.refit(sublayer, kept, damping, ridge_prior)
