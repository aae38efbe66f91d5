"""Knowledge measurement: the distillation loss and the predictive/representational scores."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kprune_ext import ops


def _kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on softmax(z / T) over the last dim, per row."""
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float,
                      key_mask: torch.Tensor | None = None, embedding_scale: float = 1.0) -> torch.Tensor:
    """Per-sample loss [batch]: T^2 KL on softmax(z/T) (classification; QA: mean of start and end
    over the real tokens), the squared error to the teacher's outputs (regression), or for sentence
    embeddings :func:`embedding_distance` at similarity scale ``embedding_scale``."""
    if kind == "embedding":
        return embedding_distance(student, teacher, embedding_scale)
    if kind == "regression":
        return (student - teacher).square().flatten(1).mean(1)
    if kind == "qa":
        fill = torch.finfo(student.dtype).min
        pad = ~key_mask
        parts = []
        for i in range(2):
            s = student[..., i].masked_fill(pad, fill)
            t = teacher[..., i].masked_fill(pad, fill)
            parts.append(_kl(t, s, temperature))
        return temperature ** 2 * (parts[0] + parts[1]) / 2
    return temperature ** 2 * _kl(teacher, student, temperature)


def embedding_distance(student: torch.Tensor, teacher: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Per-sample squared Euclidean distance [batch] between L2-normalised embeddings [batch, d], taken
    between the embeddings scaled by ``scale``: scale² · ||e_s - e_t||².

    For unit vectors ||e_s - e_t||^2 = 2 - 2 cos(e_s, e_t): twice the cosine distance, the very quantity
    embeddings are compared by (cosine similarity in retrieval and STS). Like the KL of the other tasks
    it is smooth, zero with a zero gradient when the student equals the teacher, and its curvature there
    is the Fisher-like quantity K_pred estimates; unlike a raw MSE on unnormalised vectors it ignores
    changes of norm that cosine similarity cannot see.

    The scale puts the distance on the footing of the similarity logits such models are trained with:
    sentence-transformers' contrastive loss (MultipleNegativesRankingLoss) takes softmax(scale · cos) with
    scale 20, the role T plays for a classifier's logits. At scale 1 the distance of unit vectors is tiny
    against a classifier's T²·KL (on all-mpnet-base-v2 the median K_pred / λ_rep·K_rep per sublayer was
    3·10⁻⁵ … 6·10⁻³, benchmarks/knowledge_balance.py), so the paper's λ_rep, tuned against the KL, would
    decide nearly alone."""
    return scale * scale * (student - teacher).square().sum(-1)


@dataclass
class UnitStatistics:
    """Running sums for the units of one sublayer, per dimension of the output projection's input."""

    grad_sq: torch.Tensor   # [width] sum over gradient groups of (sum_tokens a * g)^2
    act_sq: torch.Tensor    # [width] sum over tokens of a^2
    group_grads: torch.Tensor | None = None   # [groups, width] sum_tokens a * g per logical group, if grouped

    @classmethod
    def zeros(cls, width: int, device, groups: int = 0) -> "UnitStatistics":
        grouped = torch.zeros(groups, width, dtype=torch.float64, device=device) if groups else None
        return cls(torch.zeros(width, device=device), torch.zeros(width, device=device), grouped)

    def add_grouped(self, act: torch.Tensor, grad: torch.Tensor, offsets: torch.Tensor,
                    segment_group: torch.Tensor) -> None:
        """Gradients of logical groups that span compute batches: sums per group now, squares in :meth:`finish`.

        offsets: [samples + 1] token offsets of the batch's samples; segment_group: [samples] logical group
        of each sample."""
        if act.shape[1] == 0:
            return
        ops.accumulate_group_sums(act, grad, offsets, segment_group, self.group_grads, self.act_sq)

    def sums(self) -> list[torch.Tensor]:
        """The running sums, to be summed across ranks (before :meth:`finish`: a logical group's samples
        may sit on several ranks, so its gradient sum is completed before it is squared)."""
        return [self.grad_sq, self.act_sq] + ([] if self.group_grads is None else [self.group_grads])

    def finish(self) -> "UnitStatistics":
        """Square the per-group gradient sums into grad_sq (once every batch is in)."""
        if self.group_grads is not None:
            self.grad_sq.add_(self.group_grads.square().sum(0).float())
            self.group_grads = None
        return self

    def add(self, act: torch.Tensor, grad: torch.Tensor | None, offsets: torch.Tensor,
            segment_group: torch.Tensor | None = None) -> None:
        """act, grad: [tokens, width] (real tokens only); offsets: [groups + 1] of contiguous groups, or with
        segment_group: [samples] the logical group of each sample (groups that span compute batches)."""
        if act.shape[1] == 0:
            return
        if grad is not None and segment_group is not None:
            self.add_grouped(act, grad, offsets, segment_group)
        elif grad is None:
            self.act_sq.add_(act.float().square().sum(0))
        else:
            ops.accumulate_importance(act, grad, offsets, self.grad_sq, self.act_sq)


def unit_knowledge(stats: UnitStatistics, out_weight: torch.Tensor, unit_width: int, num_samples: int,
                   num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K_pred, K_rep) per unit [units].

    Per dimension K_pred = 1/2 sum_groups g^2 / N_samples and K_rep = sum_tokens a^2 * mean_j W_out[j, i]^2 /
    N_tokens; a unit (a head of unit_width dimensions, or a neuron) takes the mean of its dimensions.
    """
    k_pred = 0.5 * stats.grad_sq / num_samples
    k_rep = stats.act_sq * out_weight.float().square().mean(0) / num_tokens
    return k_pred.view(-1, unit_width).mean(1), k_rep.view(-1, unit_width).mean(1)


def combine_scores(k_pred: torch.Tensor, k_rep: torch.Tensor, unit_flops: float, lambda_pred: float,
                   lambda_rep: float, multiplier: float = 1.0) -> torch.Tensor:
    """Scores [units] = multiplier * (lambda_pred K_pred + lambda_rep K_rep) / unit_flops."""
    return multiplier * (lambda_pred * k_pred + lambda_rep * k_rep) / unit_flops


def unit_scores(stats: UnitStatistics, out_weight: torch.Tensor, unit_width: int, num_samples: int,
                num_tokens: int, unit_flops: float, lambda_pred: float, lambda_rep: float,
                multiplier: float = 1.0) -> torch.Tensor:
    """Scores [units] from a sublayer's running sums (:func:`unit_knowledge`, then :func:`combine_scores`)."""
    k_pred, k_rep = unit_knowledge(stats, out_weight, unit_width, num_samples, num_tokens)
    return combine_scores(k_pred, k_rep, unit_flops, lambda_pred, lambda_rep, multiplier)
