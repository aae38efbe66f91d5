"""What the peer methods share: labelled length-sorted batches, a masked functional forward,
the task loss, physical pruning to kept-unit lists, and a report with K-prune's keys."""
from __future__ import annotations

import copy
import resource
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import kprune_ext
from kprune.adapters import EncoderAdapter
from kprune.flops import head_flops, model_flops, neuron_flops
from kprune.samples import normalise_samples
from kprune.sublayers import attention_context
from kprune.surgery import prune_heads, prune_neurons

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


def labelled_batches(samples, vocab_size: int | None, batch_size: int = 32,
                     pad_token_id: int = 0) -> list[LabelledBatch]:
    """Length-sorted right-padded batches; labels are kept when every sample has them."""
    plain = normalise_samples(samples, vocab_size)
    raw = samples if isinstance(samples, Sequence) else [{} for _ in plain]
    keys = [k for k in LABEL_KEYS if all(isinstance(s, dict) and k in s for s in raw)]
    order = sorted(range(len(plain)), key=lambda i: plain[i]["input_ids"].numel())
    with_types = all("token_type_ids" in s for s in plain)
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        lengths = torch.tensor([plain[i]["input_ids"].numel() for i in chunk])
        seq = int(lengths.max())
        ids = torch.full((len(chunk), seq), pad_token_id, dtype=torch.long)
        types = torch.zeros((len(chunk), seq), dtype=torch.long) if with_types else None
        for row, i in enumerate(chunk):
            n = plain[i]["input_ids"].numel()
            ids[row, :n] = plain[i]["input_ids"]
            if types is not None:
                types[row, :n] = plain[i]["token_type_ids"]
        labels = {}
        for key in keys:
            values = [raw[i][key] for i in chunk]
            labels[key] = torch.stack([torch.as_tensor(v) for v in values]).reshape(-1)
        key_mask = torch.arange(seq)[None, :] < lengths[:, None]
        batches.append(LabelledBatch(ids, types, key_mask, labels))
    return batches


def masked_logits(adapter: EncoderAdapter, batch: LabelledBatch,
                  head_masks: Sequence[torch.Tensor] | None = None,
                  neuron_masks: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Task logits with per-sample masks: head_masks[l]: [batch, heads], neuron_masks[l]: [batch, neurons]
    multiply the input of each output projection (None: no mask)."""
    x = adapter.embed(batch.input_ids, batch.token_type_ids)
    for l in range(adapter.num_layers):
        view = adapter.layer(l)
        ctx = attention_context(view, x, batch.key_mask)
        if head_masks is not None and view.num_heads:
            ctx = ctx * head_masks[l].repeat_interleave(view.head_size, dim=1)[:, None, :]
        x = view.attn_norm(x + view.attn_out(ctx))
        act = view.ffn_act(view.ffn_in(x))
        if neuron_masks is not None:
            act = act * neuron_masks[l][:, None, :]
        x = view.ffn_norm(x + view.ffn_out(act))
    return adapter.head(x)


def per_sample_task_loss(logits: torch.Tensor, batch: LabelledBatch, task: str,
                         teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
    """[batch] losses against the true labels (cross-entropy, squared error, QA start/end cross-entropy).
    Without labels, classification and QA fall back to the teacher's argmax (pseudo-labels)."""
    if task == "qa":
        fill = torch.finfo(logits.dtype).min
        start = logits[..., 0].masked_fill(~batch.key_mask, fill)
        end = logits[..., 1].masked_fill(~batch.key_mask, fill)
        if "start_positions" in batch.labels:
            s_pos, e_pos = batch.labels["start_positions"].long(), batch.labels["end_positions"].long()
        else:
            if teacher_logits is None:
                raise ValueError("QA samples without start/end positions need teacher logits")
            s_pos = teacher_logits[..., 0].masked_fill(~batch.key_mask, fill).argmax(1)
            e_pos = teacher_logits[..., 1].masked_fill(~batch.key_mask, fill).argmax(1)
        return (F.cross_entropy(start, s_pos, reduction="none") + F.cross_entropy(end, e_pos, reduction="none")) / 2
    if task == "regression":
        if "labels" not in batch.labels:
            raise ValueError("regression needs labelled samples ('labels') for the Fisher information")
        return (logits[:, 0] - batch.labels["labels"].float()).square()
    if "labels" in batch.labels:
        target = batch.labels["labels"].long()
    else:
        if teacher_logits is None:
            raise ValueError("classification samples without labels need teacher logits")
        target = teacher_logits.argmax(-1)
    return F.cross_entropy(logits, target, reduction="none")


def prune_to(adapter: EncoderAdapter, heads_kept: Sequence[Sequence[int]],
             neurons_kept: Sequence[Sequence[int]]) -> None:
    """Physically keep the listed units (indices into the current units) of every layer, in place."""
    for l in range(adapter.num_layers):
        if len(heads_kept[l]) != adapter.layer(l).num_heads:
            prune_heads(adapter, l, list(heads_kept[l]))
        if len(neurons_kept[l]) != adapter.layer(l).num_neurons:
            prune_neurons(adapter, l, list(neurons_kept[l]))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def unit_costs(adapter: EncoderAdapter, seq_len: float) -> tuple[float, float]:
    return head_flops(seq_len, adapter.hidden_size, adapter.head_size), neuron_flops(seq_len, adapter.hidden_size)


def full_flops(adapter: EncoderAdapter, seq_len: float) -> float:
    heads, neurons = adapter.units_kept()
    return model_flops(heads, neurons, seq_len, adapter.hidden_size, adapter.head_size)


def student_copy(model: nn.Module) -> EncoderAdapter:
    student = copy.deepcopy(model).eval()
    student.requires_grad_(False)
    return EncoderAdapter(student)


def build_report(task: str, teacher: EncoderAdapter, student: EncoderAdapter, flops_reduction: float,
                 num_samples: int, num_tokens: int, seconds: dict[str, float], config: dict) -> dict:
    """The keys of kprune's PruneResult.report, for a peer method."""
    seq_len = num_tokens / num_samples
    before = full_flops(teacher, seq_len)
    after = full_flops(student, seq_len)
    heads, neurons = student.units_kept()
    return {
        "task": task,
        "architecture": student.arch.family,
        "flops_reduction_target": flops_reduction,
        "flops_before": before,
        "flops_after": after,
        "flops_budget": (1.0 - flops_reduction) * before,
        "flops_reduction": 1.0 - after / before,
        "params_before": count_parameters(teacher.model),
        "params_after": count_parameters(student.model),
        "heads_kept": heads,
        "neurons_kept": neurons,
        "heads_per_layer": teacher.original_heads,
        "neurons_per_layer": teacher.original_neurons,
        "num_samples": num_samples,
        "num_tokens": num_tokens,
        "avg_seq_len": seq_len,
        "seconds": {key: round(value, 3) for key, value in seconds.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "extension": kprune_ext.EXTENSION_LOADED,
        "config": config,
    }
