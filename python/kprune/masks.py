"""Head and neuron masks: run a model under them through the compiled masked ops, or apply them.

A mask value multiplies a unit's input to its sublayer's output projection (a head's context, a
neuron's activation), as in DESIGN.md. :func:`masked` runs the model's own forward with its output
projections (and, for the FFN, the whole sublayer) replaced by the compiled masked ops, reading the
model's weights in place: no copies, no surgery, and units whose mask is 0 are not computed at all.
:func:`apply_masks` removes the zero-mask units physically and folds the other values into the
output projections, so the smaller model computes what the masked one did.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from kprune.adapters import EncoderAdapter
from kprune.errors import ConfigError
from kprune.surgery import head_columns, prune_heads, prune_neurons
from kprune_ext import ops


@dataclass
class UnitMasks:
    """Per-layer mask values: ``heads[l]`` of shape [heads of layer l], ``neurons[l]`` [neurons of layer l]."""

    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]

    @classmethod
    def ones(cls, model: nn.Module, requires_grad: bool = False) -> "UnitMasks":
        """All units kept (mask 1), shaped after ``model``'s current layers."""
        adapter = EncoderAdapter(model)
        device = next(model.parameters()).device
        heads, neurons = adapter.units_kept()
        return cls([torch.ones(h, device=device, requires_grad=requires_grad) for h in heads],
                   [torch.ones(n, device=device, requires_grad=requires_grad) for n in neurons])

    @classmethod
    def from_kept(cls, model: nn.Module, heads_kept: Sequence[Sequence[int]],
                  neurons_kept: Sequence[Sequence[int]]) -> "UnitMasks":
        """Binary masks keeping the listed units (indices into each layer's current units)."""
        masks = cls.ones(model)
        for values, kept in zip(masks.heads + masks.neurons, list(heads_kept) + list(neurons_kept)):
            keep = torch.zeros_like(values, dtype=torch.bool)
            keep[torch.as_tensor(list(kept), dtype=torch.long)] = True
            values.masked_fill_(~keep, 0.0)
        return masks

    def kept(self) -> tuple[list[list[int]], list[list[int]]]:
        """Indices of the units with a non-zero mask, per layer: (heads, neurons)."""
        def nonzero(values):
            return torch.nonzero(values.detach() != 0).flatten().tolist()
        return [nonzero(m) for m in self.heads], [nonzero(m) for m in self.neurons]

    def counts(self) -> tuple[list[int], list[int]]:
        heads, neurons = self.kept()
        return [len(h) for h in heads], [len(n) for n in neurons]

    def check(self, adapter: EncoderAdapter) -> None:
        """Refuse masks whose shapes do not fit the model's layers."""
        heads, neurons = adapter.units_kept()
        if len(self.heads) != adapter.num_layers or len(self.neurons) != adapter.num_layers:
            raise ConfigError(f"masks cover {len(self.heads)} / {len(self.neurons)} layers (heads / neurons); "
                              f"the model has {adapter.num_layers}")
        for l, (m, h, mn, n) in enumerate(zip(self.heads, heads, self.neurons, neurons)):
            if tuple(m.shape) != (h,) or tuple(mn.shape) != (n,):
                raise ConfigError(f"layer {l}: masks of shapes {tuple(m.shape)} / {tuple(mn.shape)} (heads / neurons); "
                                  f"the layer has {h} heads and {n} neurons")


def _kept_and_values(mask: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Units to compute and their mask values: every unit when the mask needs gradients, else the non-zero ones."""
    mask = mask.to(dtype)
    if mask.requires_grad:
        return torch.arange(mask.numel(), device=mask.device), mask
    kept = torch.nonzero(mask != 0).flatten()
    return kept, mask.index_select(0, kept)


class _MaskedSublayer(nn.Module):
    """Stands in for a sublayer's output projection (attention) or its whole FFN (ffn) under masks.

    ``probe``, when given, sees each forward's kept activations and output (see kprune.measure)."""

    def __init__(self, kind: str, sublayer: int, out_proj: nn.Linear, mask: torch.Tensor, head_size: int,
                 ffn_in: nn.Linear | None = None, activation: str | None = None, probe=None):
        super().__init__()
        self.kind, self.sublayer, self.head_size, self.activation = kind, sublayer, head_size, activation
        self.out_proj, self.ffn_in = out_proj, ffn_in
        self.mask, self.probe = mask, probe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        kept, values = _kept_and_values(self.mask, flat.dtype)
        if self.probe is not None:
            values = self.probe.mask_values(self.sublayer, values)
        w, b = self.out_proj.weight, self.out_proj.bias
        if self.kind == "attention":
            out, act = ops.masked_attention_output(flat, w, b, kept, values, self.head_size)
            columns = head_columns(kept, self.head_size)
        else:
            out, act = ops.masked_ffn(flat, self.ffn_in.weight, self.ffn_in.bias, w, b, kept, values, self.activation)
            columns = kept
        if self.probe is not None:
            self.probe.record(self.sublayer, act, out, columns, w)
        return out.view(*x.shape[:-1], out.shape[-1])


@contextmanager
def masked(model: nn.Module, masks: UnitMasks | None = None, probe=None) -> Iterator[nn.Module]:
    """Run ``model`` under ``masks`` inside the ``with`` block: ``with masked(model, masks): model(**inputs)``.

    The model's own forward runs, with each output projection (and each FFN) replaced by the compiled
    masked op on the same weight tensors; units whose mask is 0 are skipped unless the mask requires
    gradients (then every unit runs so each mask value gets its gradient, through the ops' autograd).
    ``masks=None`` keeps every unit. The model is restored on exit, also after an error.
    """
    adapter = EncoderAdapter(model)
    masks = masks if masks is not None else UnitMasks.ones(model)
    masks.check(adapter)
    arch = adapter.arch
    swapped: list[tuple[int, str, nn.Module]] = []
    try:
        for l in range(adapter.num_layers):
            view = adapter.layer(l)
            if view.num_heads:
                swapped.append((l, arch.attn_out, view.attn_out))
                adapter.replace_in_layer(l, arch.attn_out, _MaskedSublayer(
                    "attention", 2 * l, view.attn_out, masks.heads[l], view.head_size, probe=probe))
            if view.num_neurons and view.gated:
                # value and gate rows stay in the input projection (every neuron runs there); the mask
                # sits on the output projection's input, as for heads of width 1
                swapped.append((l, arch.ffn_out, view.ffn_out))
                adapter.replace_in_layer(l, arch.ffn_out, _MaskedSublayer(
                    "attention", 2 * l + 1, view.ffn_out, masks.neurons[l], 1, probe=probe))
            elif view.num_neurons:
                for path, module in ((arch.ffn_in, view.ffn_in), (arch.ffn_act, view.ffn_act),
                                     (arch.ffn_out, view.ffn_out)):
                    swapped.append((l, path, module))
                # the first projection and activation become identities: the FFN runs whole in the op
                adapter.replace_in_layer(l, arch.ffn_in, nn.Identity())
                adapter.replace_in_layer(l, arch.ffn_act, nn.Identity())
                adapter.replace_in_layer(l, arch.ffn_out, _MaskedSublayer(
                    "ffn", 2 * l + 1, view.ffn_out, masks.neurons[l], 1, view.ffn_in, adapter.activation, probe))
        yield model
    finally:
        for l, path, module in reversed(swapped):
            adapter.replace_in_layer(l, path, module)


def apply_masks(model: nn.Module, masks: UnitMasks, inplace: bool = False) -> nn.Module:
    """Remove the units whose mask is 0 and fold the other mask values into the output projections.

    Returns the physically pruned model (``model`` itself when ``inplace``, else a pruned copy); its
    outputs equal those of ``model`` run under ``masked(model, masks)``.
    """
    adapter = EncoderAdapter(model)
    masks.check(adapter)
    target = model if inplace else copy.deepcopy(model)
    pruned = EncoderAdapter(target)
    heads_kept, neurons_kept = masks.kept()
    for l in range(pruned.num_layers):
        view = pruned.layer(l)
        with torch.no_grad():
            head_scale = masks.heads[l].detach().to(view.attn_out.weight.dtype)
            view.attn_out.weight.mul_(head_scale.repeat_interleave(view.head_size)[None, :])
            view.ffn_out.weight.mul_(masks.neurons[l].detach().to(view.ffn_out.weight.dtype)[None, :])
        if len(heads_kept[l]) != view.num_heads:
            prune_heads(pruned, l, heads_kept[l])
        if len(neurons_kept[l]) != view.num_neurons:
            prune_neurons(pruned, l, neurons_kept[l])
    return target
