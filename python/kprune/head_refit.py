"""A last re-fit of the task head's output layer against the teacher (candidate ``KPruneConfig.head_refit``).

Once every sublayer is pruned and tuned, the student's last hidden states still differ from the teacher's.
The head's final linear layer (the classifier, or the QA span projection) is re-fitted by ridge least
squares so that the student's outputs match the teacher's stored ones (logits; regression scores; QA start
and end logits on the real tokens), bias unchanged, pulled towards its current weights. The ridge strength
is chosen by 2-fold held-out error (:mod:`kprune.heldout`) among :data:`HEAD_DAMPINGS` and "keep", so the
layer changes only where the re-fit predicts held-out outputs better than the weights it has.
"""
from __future__ import annotations

import torch
from torch import nn

from kprune.adapters import EncoderAdapter
from kprune.heldout import choose_damping, ridge_solve, sample_folds
from kprune.tuning import tuner_for

HEAD_DAMPINGS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def head_output_layer(adapter: EncoderAdapter) -> nn.Linear | None:
    """The last linear layer of the task head (None for a bare encoder used for embeddings)."""
    if adapter.head_kind == "embedding":
        return None
    model = adapter.model   # QA heads end in qa_outputs, except ModernBERT's (head, then its classifier)
    head = model.qa_outputs if adapter.head_kind == "qa" and hasattr(model, "qa_outputs") else model.classifier
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def refit_head(adapter: EncoderAdapter, hidden: list[torch.Tensor], batches, teacher_outputs: list[torch.Tensor],
               fold: torch.Tensor, collective, dampings=HEAD_DAMPINGS) -> dict:
    """Re-fit the head's output layer in place from the student's last hidden states per batch and the
    teacher's outputs on the same batches; returns the damping chosen (None: kept) and each one's error."""
    layer = head_output_layer(adapter)
    if layer is None:
        return {"damping": None, "reason": "no task head"}
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    width, outputs = layer.in_features, layer.out_features
    device = layer.weight.device
    sums = [torch.zeros(width, width, dtype=torch.float64, device=device),      # Gram, all rows
            torch.zeros(width, outputs, dtype=torch.float64, device=device),    # cross term, all rows
            torch.zeros(width, width, dtype=torch.float64, device=device),      # the same, held-out rows
            torch.zeros(width, outputs, dtype=torch.float64, device=device)]
    bias = layer.bias.detach().double() if layer.bias is not None else 0.0
    try:
        with torch.no_grad():
            for x, batch, target in zip(hidden, batches, teacher_outputs):
                seen.clear()
                adapter.head(x, batch.key_mask)
                features = seen[-1].double()
                held_out = fold[batch.sample_index].to(device)
                if features.dim() == 3:   # QA: one row per real token
                    held_out = held_out[:, None].expand(batch.key_mask.shape)[batch.key_mask]
                    features, target = features[batch.key_mask], target[batch.key_mask]
                residual = target.double().reshape(features.shape[0], -1) - bias
                sums[0] += features.t() @ features
                sums[1] += features.t() @ residual
                sums[2] += features[held_out].t() @ features[held_out]
                sums[3] += features[held_out].t() @ residual[held_out]
    finally:
        handle.remove()
    collective.all_reduce(sums)
    prior = layer.weight.detach().double().t()
    best, errors = choose_damping(*sums, [None, *dampings], prior)
    if best is not None:
        with torch.no_grad():
            layer.weight.copy_(ridge_solve(sums[0], sums[1], best, prior).t().to(layer.weight.dtype))
    return {"damping": best, "errors": {str(d): e for d, e in errors.items()}}


def refit_task_head(student: nn.Module, teacher: nn.Module, samples, batch_size: int = 32, seed: int = 0) -> dict:
    """Re-fit ``student``'s task-head output layer in place so that its outputs on ``samples`` match
    ``teacher``'s, as ``KPruneConfig.head_refit`` does once every sublayer is pruned (the mask-level API's last
    step). ``seed`` splits the samples into the two folds that choose the ridge strength, as the config's seed
    does. Returns the damping chosen (None: the layer kept as it was) and each candidate's held-out error."""
    tuner = tuner_for(student, teacher, samples, batch_size)
    for k in range(tuner.num_sublayers):
        tuner.advance(k)
    with torch.no_grad():
        targets = [tuner.teacher.head(x, b.key_mask) for x, b in zip(tuner.teacher_cache, tuner.batches)]
    num_samples = sum(b.sample_index.numel() for b in tuner.batches)
    try:
        return refit_head(tuner.student, tuner.student_cache, tuner.batches, targets, sample_folds(num_samples, seed),
                          tuner.collective)
    finally:
        tuner.release()
