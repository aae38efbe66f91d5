"""Choosing a ridge damping by held-out error, from sufficient statistics (no extra pass).

A damped least-squares fit (G + λI)·X = C + λ·P (P: the weights the ridge pulls towards; zero for KPWT)
is trained on one half of the sample and scored on the other: the held-out error
‖A·X − B‖² = tr(Xᵀ·G'·X) − 2·tr(Xᵀ·C') + ‖B‖² needs only the other half's Gram G' = AᵀA and cross term
C' = AᵀB. The halves are a seeded random split of the samples; the score is the sum over both ways round
(2-fold cross-validation). λ is relative to mean(diag(G)), as in :func:`kprune_ext.ops.solve_damped`.

Candidate ``KPruneConfig.damping_search``: each sublayer's KPWT damping is the candidate of
:data:`SUBLAYER_DAMPINGS` (with the configured damping first) that predicts held-out targets best.
"""
from __future__ import annotations

import torch

from kprune.errors import NumericalError
from kprune_ext import ops

SUBLAYER_DAMPINGS = (1e-3, 1e-2, 3e-2, 1e-1, 3e-1)   # tried besides KPruneConfig.damping
# tried too when the ridge pulls towards the original weights: stronger pulls, and None = keep them (no re-fit)
PRIOR_DAMPINGS = (1.0, 3.0, None)


def sample_folds(num_samples: int, seed: int) -> torch.Tensor:
    """[samples] bool: True for the held-out half of a seeded random split (sizes differ by at most one)."""
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed + 7919))
    fold = torch.zeros(num_samples, dtype=torch.bool)
    fold[order[1::2]] = True
    return fold


def ridge_solve(gram: torch.Tensor, cross: torch.Tensor, damping: float,
                prior: torch.Tensor | None = None) -> torch.Tensor:
    """X [k, m] solving (G + λI)·X = C + λ·P in float64, λ = damping · mean(diag(G)) (damping when the
    diagonal is zero), escalated 10x until the Cholesky factorisation succeeds."""
    g, c = gram.double(), cross.double()
    k = g.shape[0]
    if k == 0:
        return c.clone()
    mean_diag = float(g.diagonal().mean())
    scale = damping * (mean_diag if mean_diag > 0 else 1.0)
    eye = torch.eye(k, dtype=g.dtype, device=g.device)
    for _ in range(8):
        chol, info = torch.linalg.cholesky_ex(g + scale * eye)
        if int(info) == 0:
            rhs = c if prior is None else c + scale * prior.double()
            return torch.cholesky_solve(rhs, chol)
        scale *= 10
    raise NumericalError(f"damped Cholesky failed (final damping {scale:.3g})")


def heldout_error(x: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor) -> float:
    """‖A·X − B‖² − ‖B‖² from the held-out Gram AᵀA and cross term AᵀB."""
    x = x.double()
    return float((x * (gram.double() @ x)).sum() - 2 * (x * cross.double()).sum())


def choose_damping(gram: torch.Tensor, cross: torch.Tensor, gram_out: torch.Tensor, cross_out: torch.Tensor,
                   candidates, prior: torch.Tensor | None = None) -> tuple[float | None, dict]:
    """The candidate damping with the least 2-fold held-out error, and every candidate's error.

    gram, cross: over the whole sample; gram_out, cross_out: over the held-out half (the other half is the
    difference). A candidate None means "keep ``prior``" (no re-fit). Ties go to the earlier candidate."""
    halves = [(gram - gram_out, cross - cross_out), (gram_out, cross_out)]
    errors: dict = {}
    for damping in candidates:
        total = 0.0
        for (g_fit, c_fit), (g_eval, c_eval) in (halves, halves[::-1]):
            x = prior if damping is None else ridge_solve(g_fit, c_fit, damping, prior)
            total += heldout_error(x, g_eval, c_eval)
        errors[damping] = total
    best = min(errors, key=lambda d: (errors[d], list(errors).index(d)))
    return best, errors


class FoldStatistics:
    """The held-out half's share of a statistics pass (:attr:`kprune.tuning.SublayerTuner.held_out`): its rows'
    Gram and cross term; the tuner sums the other rows, so every row's products are computed once."""

    def __init__(self, fold: torch.Tensor):
        self.fold = fold
        self.gram: torch.Tensor | None = None
        self.cross: torch.Tensor | None = None

    def take(self, batch, act: torch.Tensor, target: torch.Tensor,
             columns: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the held-out rows of act [tokens, units] and target [tokens, d]; return the other rows."""
        self._allocate(act.shape[1] if columns is None else columns.numel(), target.shape[1], act.device)
        rows = torch.repeat_interleave(self.fold[batch.sample_index], batch.lengths).to(act.device)
        if not bool(rows.any()):
            return act, target
        ops.gram_accumulate(act[rows], target[rows], columns, self.gram, self.cross)
        rest = ~rows
        return act[rest], target[rest]

    def reduce(self, collective, gram: torch.Tensor, cross: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out sums over every rank (zeros shaped as ``gram``/``cross`` where this rank saw no rows)."""
        if self.gram is None:
            self.gram, self.cross = torch.zeros_like(gram), torch.zeros_like(cross)
        collective.all_reduce([self.gram, self.cross])
        return self.gram, self.cross

    def _allocate(self, width: int, dims: int, device) -> None:
        if self.gram is None:   # float64, as the tuner's sums (kprune.tuning)
            self.gram = torch.zeros(width, width, dtype=torch.float64, device=device)
            self.cross = torch.zeros(width, dims, dtype=torch.float64, device=device)


def refit_selecting_damping(tuner, sublayer: int, fold: torch.Tensor, default: float,
                            ridge_prior: str = "zero", kept=None) -> tuple[torch.Tensor, dict]:
    """KPWT of one sublayer (:meth:`SublayerTuner.refit`, on ``kept`` units or all) with the damping chosen
    by held-out error among ``default`` and :data:`SUBLAYER_DAMPINGS`; returns the solution Wᵀ and a
    record of the choice and every candidate's error.

    ridge_prior "original": the ridge pulls towards the kept units' current weights, and keeping them
    without re-fit (damping None) is a candidate too, so the sublayer is never fitted worse on held-out
    samples than masking alone."""
    observer = FoldStatistics(fold)
    candidates = [default] + [d for d in SUBLAYER_DAMPINGS if d != default]
    if ridge_prior == "original":
        candidates += list(PRIOR_DAMPINGS)
    chosen: dict = {"sublayer": sublayer}

    def pick(stats, prior) -> float | None:
        if observer.gram is None:   # no units: nothing was summed
            observer.gram, observer.cross = torch.zeros_like(stats.gram), torch.zeros_like(stats.cross)
        best, errors = choose_damping(stats.gram, stats.cross, observer.gram, observer.cross, candidates, prior)
        chosen.update(damping=best, errors={str(d): e for d, e in errors.items()})
        return best

    tuner.held_out = observer
    try:
        solution = tuner.refit(sublayer, kept, damping=pick, ridge_prior=ridge_prior)
    finally:
        tuner.held_out = None
    return solution, chosen
