"""What the peer methods share: labelled length-sorted batches, the task loss, unit counts and
costs, and a report with K-prune's keys. Peers use kprune's public API only, as an outside tool would."""
from __future__ import annotations

import resource
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import kprune
import kprune_ext

LABEL_KEYS = ("labels", "start_positions", "end_positions")


@dataclass
class LabelledBatch:
    input_ids: torch.Tensor              # [batch, seq]
    token_type_ids: torch.Tensor | None  # [batch, seq]
    key_mask: torch.Tensor               # [batch, seq] bool, True on real tokens
    labels: dict[str, torch.Tensor]      # any of LABEL_KEYS, [batch]

    @property
    def num_tokens(self) -> int:
        return int(self.key_mask.sum())

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Model inputs and labels, as :func:`kprune.mask_gradients` takes a batch."""
        out = {"input_ids": self.input_ids, "attention_mask": self.key_mask.long(), **self.labels}
        if self.token_type_ids is not None:
            out["token_type_ids"] = self.token_type_ids
        return out


def labelled_batches(samples: Sequence[dict], batch_size: int = 32, pad_token_id: int = 0) -> list[LabelledBatch]:
    """Length-sorted right-padded batches of unpadded samples; labels are kept when every sample has them."""
    if not samples:
        raise ValueError("samples is empty")
    ids_of = [torch.as_tensor(s["input_ids"]).reshape(-1).long() for s in samples]
    keys = [k for k in LABEL_KEYS if all(k in s for s in samples)]
    order = sorted(range(len(samples)), key=lambda i: ids_of[i].numel())
    with_types = all("token_type_ids" in s for s in samples)
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        lengths = torch.tensor([ids_of[i].numel() for i in chunk])
        seq = int(lengths.max())
        ids = torch.full((len(chunk), seq), pad_token_id, dtype=torch.long)
        types = torch.zeros((len(chunk), seq), dtype=torch.long) if with_types else None
        for row, i in enumerate(chunk):
            n = ids_of[i].numel()
            ids[row, :n] = ids_of[i]
            if types is not None:
                types[row, :n] = torch.as_tensor(samples[i]["token_type_ids"]).reshape(-1)[:n]
        labels = {key: torch.stack([torch.as_tensor(samples[i][key]) for i in chunk]).reshape(-1) for key in keys}
        key_mask = torch.arange(seq)[None, :] < lengths[:, None]
        batches.append(LabelledBatch(ids, types, key_mask, labels))
    return batches


def check_args(task: str, flops_reduction: float) -> None:
    """The checks every method makes on its arguments, with kprune's error types."""
    if task not in ("classification", "regression", "qa"):
        raise kprune.ConfigError(f"task={task!r} is not a task kind; accepted: classification, regression, qa")
    if isinstance(flops_reduction, bool) or not isinstance(flops_reduction, (int, float)) \
            or not 0.0 < flops_reduction < 1.0:
        raise kprune.ConfigError(f"flops_reduction={flops_reduction!r} must be a number strictly between 0 and 1")


def sample_counts(samples: Sequence[dict]) -> tuple[int, int]:
    """(samples, real tokens) of unpadded samples."""
    if not samples:
        raise ValueError("samples is empty")
    return len(samples), sum(torch.as_tensor(s["input_ids"]).numel() for s in samples)


def task_logits(outputs, task: str) -> torch.Tensor:
    if task == "qa":
        return torch.stack([outputs.start_logits, outputs.end_logits], -1)
    return outputs.logits


def per_sample_task_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor], task: str,
                         teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
    """[batch] losses against the true labels (cross-entropy, squared error, QA start/end cross-entropy).
    Without labels, classification and QA fall back to the teacher's argmax (pseudo-labels)."""
    if task == "qa":
        key_mask = batch["attention_mask"].bool()
        fill = torch.finfo(logits.dtype).min
        start = logits[..., 0].masked_fill(~key_mask, fill)
        end = logits[..., 1].masked_fill(~key_mask, fill)
        if "start_positions" in batch:
            s_pos, e_pos = batch["start_positions"].long(), batch["end_positions"].long()
        else:
            if teacher_logits is None:
                raise ValueError("QA samples without start/end positions need teacher logits")
            s_pos = teacher_logits[..., 0].masked_fill(~key_mask, fill).argmax(1)
            e_pos = teacher_logits[..., 1].masked_fill(~key_mask, fill).argmax(1)
        return (F.cross_entropy(start, s_pos, reduction="none") + F.cross_entropy(end, e_pos, reduction="none")) / 2
    if task == "regression":
        if "labels" not in batch:
            raise ValueError("regression needs labelled samples ('labels') for the Fisher information")
        return (logits[:, 0] - batch["labels"].float()).square()
    if "labels" in batch:
        target = batch["labels"].long()
    else:
        if teacher_logits is None:
            raise ValueError("classification samples without labels need teacher logits")
        target = teacher_logits.argmax(-1)
    return F.cross_entropy(logits, target, reduction="none")


def units_kept(model: nn.Module) -> tuple[list[int], list[int]]:
    layers = kprune.encoder_layers(model)
    return [v.num_heads for v in layers], [v.num_neurons for v in layers]


def unit_costs(model: nn.Module, seq_len: float) -> tuple[float, float]:
    view = kprune.encoder_layers(model)[0]
    hidden = view.attn_out.out_features
    return kprune.head_flops(seq_len, hidden, view.head_size), kprune.neuron_flops(seq_len, hidden)


def full_flops(model: nn.Module, seq_len: float) -> float:
    heads, neurons = units_kept(model)
    view = kprune.encoder_layers(model)[0]
    return kprune.model_flops(heads, neurons, seq_len, view.attn_out.out_features, view.head_size)


def prune_to(model: nn.Module, heads_kept: Sequence[Sequence[int]], neurons_kept: Sequence[Sequence[int]]) -> nn.Module:
    """A pruned copy of ``model`` keeping the listed units (indices into each layer's units)."""
    pruned = kprune.apply_masks(model, kprune.UnitMasks.from_kept(model, heads_kept, neurons_kept))
    pruned.requires_grad_(False)
    return pruned.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_report(task: str, teacher: nn.Module, student: nn.Module, flops_reduction: float,
                 num_samples: int, num_tokens: int, seconds: dict[str, float], config: dict) -> dict:
    """The keys of kprune's PruneResult.report, for a peer method."""
    seq_len = num_tokens / num_samples
    before = full_flops(teacher, seq_len)
    after = full_flops(student, seq_len)
    heads, neurons = units_kept(student)
    original_heads, original_neurons = units_kept(teacher)
    return {
        "task": task,
        "architecture": student.config.model_type,
        "flops_reduction_target": flops_reduction,
        "flops_before": before,
        "flops_after": after,
        "flops_budget": (1.0 - flops_reduction) * before,
        "flops_reduction": 1.0 - after / before,
        "params_before": count_parameters(teacher),
        "params_after": count_parameters(student),
        "heads_kept": heads,
        "neurons_kept": neurons,
        "heads_per_layer": original_heads[0],
        "neurons_per_layer": original_neurons[0],
        "num_samples": num_samples,
        "num_tokens": num_tokens,
        "avg_seq_len": seq_len,
        "seconds": {key: round(value, 3) for key, value in seconds.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "extension": kprune_ext.EXTENSION_LOADED,
        "config": config,
        "world_size": 1,   # peers run in one process
        "communication": {"bytes_per_step": [], "bytes": 0, "seconds": 0.0, "wait_seconds": 0.0},
    }
