"""Modeling code that lets a pruned model load with transformers alone (``trust_remote_code=True``).

:func:`kprune.save_pruned` copies this file, verbatim, into every output folder as
``modeling_kprune.py`` and points the config's ``auto_map`` at its classes. Each class is the
family's own transformers class (same forward, same outputs) whose constructor shrinks every layer
to the heads and neurons counted in the config's ``kprune`` block, before the weights are loaded.
It must depend only on torch and transformers: it never imports kprune.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import transformers
from torch import nn
from torch.nn.utils import skip_init


class Layout(NamedTuple):
    """Where one family keeps the pruned projections (paths from a layer, except ``layers``)."""

    stem: str           # class-name stem: Bert -> BertModel, BertForSequenceClassification, ...
    layers: str         # path from the encoder to its ModuleList of layers
    attention: str      # the module replaced by HeadlessAttention when a layer keeps no heads
    qkv: tuple[str, str, str]
    attn_out: str
    ffn_in: str
    ffn_out: str
    position_bias: bool = False   # one position bias for all heads, shared by the layers: slice it per layer
    head_rows: tuple[str, ...] = ()   # further per-head projections, where a layer has them (DeBERTa's pos_*_proj)
    fused_qkv: bool = False       # qkv names one projection holding query, key and value rows
    gated_ffn: bool = False       # ffn_in gives a value and a gate row per neuron


_BERT_LIKE = dict(layers="encoder.layer", attention="attention.self",
                  qkv=("attention.self.query", "attention.self.key", "attention.self.value"),
                  attn_out="attention.output.dense", ffn_in="intermediate.dense", ffn_out="output.dense")

LAYOUTS = {  # by config.model_type
    "bert": Layout(stem="Bert", **_BERT_LIKE),
    "roberta": Layout(stem="Roberta", **_BERT_LIKE),
    "xlm-roberta": Layout(stem="XLMRoberta", **_BERT_LIKE),
    "electra": Layout(stem="Electra", **_BERT_LIKE),
    "distilbert": Layout(stem="DistilBert", layers="transformer.layer", attention="attention",
                         qkv=("attention.q_lin", "attention.k_lin", "attention.v_lin"),
                         attn_out="attention.out_lin", ffn_in="ffn.lin1", ffn_out="ffn.lin2"),
    "mpnet": Layout(stem="MPNet", layers="encoder.layer", attention="attention.attn",
                    qkv=("attention.attn.q", "attention.attn.k", "attention.attn.v"), attn_out="attention.attn.o",
                    ffn_in="intermediate.dense", ffn_out="output.dense", position_bias=True),
    "deberta-v2": Layout(stem="DebertaV2", **dict(
        _BERT_LIKE, qkv=("attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj"),
        head_rows=("attention.self.pos_key_proj", "attention.self.pos_query_proj"))),
    "modernbert": Layout(stem="ModernBert", layers="layers", attention="attn", qkv=("attn.Wqkv",),
                         attn_out="attn.Wo", ffn_in="mlp.Wi", ffn_out="mlp.Wo", fused_qkv=True, gated_ffn=True),
}
HEADS = ("Model", "ForSequenceClassification", "ForQuestionAnswering")
BASE_CLASSES = frozenset(layout.stem + head for layout in LAYOUTS.values() for head in HEADS)  # of transformers
CLASS_PREFIX = "KPrune"


class HeadlessAttention(nn.Module):
    """Self-attention with no heads: a [..., 0] context, or the output bias where the family's
    attention module owns its output projection (DistilBERT). It keeps the (empty) projections of
    the module it replaces under their names, so parameter names and module paths are unchanged."""

    def __init__(self, replaced: nn.Module, out_proj_name: str | None = None):
        super().__init__()
        self.out_proj_name = out_proj_name
        for name, child in replaced.named_children():
            if isinstance(child, nn.Linear):
                setattr(self, name, child)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        empty = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        if self.out_proj_name is not None:
            return getattr(self, self.out_proj_name)(empty), None
        return empty, None


class KeptHeadsBias:
    """Mixin for a self-attention that kept some heads of a position bias computed once, for all the
    original heads, and passed to every layer (MPNet's relative attention bias): it adds only its kept
    heads' slices. ``bias_heads`` (a tuple of indices into the original heads) is a plain attribute, not a
    buffer: transformers builds models on the meta device, where buffers not in the checkpoint are lost."""

    bias_heads: tuple[int, ...]

    def forward(self, hidden_states, attention_mask=None, position_bias=None, *args, **kwargs):
        if position_bias is not None:
            index = torch.tensor(self.bias_heads, dtype=torch.long, device=position_bias.device)
            position_bias = position_bias.index_select(1, index)
        return super().forward(hidden_states, attention_mask, position_bias, *args, **kwargs)


def _kept_heads_class(base: type) -> type:
    name = "KeptHeads" + base.__name__
    if name not in globals():   # module-level, so that pickling finds it
        globals()[name] = type(name, (KeptHeadsBias, base), {"__module__": __name__})
    return globals()[name]


def keep_bias_heads(attention: nn.Module, kept) -> None:
    """Make ``attention`` add only the ``kept`` original heads' slices of the shared position bias."""
    if not isinstance(attention, KeptHeadsBias):
        attention.__class__ = _kept_heads_class(type(attention))
    attention.bias_heads = tuple(int(i) for i in kept)


def kept_bias_heads(attention: nn.Module, total: int) -> torch.Tensor:
    """Indices (into the original heads) of the heads ``attention`` computes: all ``total`` unless pruned."""
    kept = getattr(attention, "bias_heads", None)
    device = next(attention.parameters()).device
    return torch.arange(total, device=device) if kept is None else torch.tensor(kept, dtype=torch.long, device=device)


def position_heads(model: nn.Module) -> list[list[int]] | None:
    """Per layer, the original heads kept, for families with a shared position bias (else None)."""
    layout = LAYOUTS[model.config.model_type]
    if not layout.position_bias:
        return None
    total = int(model.config.num_attention_heads)
    layers = model.base_model.get_submodule(layout.layers)
    return [kept_bias_heads(layer.get_submodule(layout.attention), total).tolist()
            if layer.get_submodule(layout.attn_out).in_features else [] for layer in layers]


def present(layer: nn.Module, paths) -> tuple[str, ...]:
    """Those of ``paths`` that exist in ``layer`` (optional projections such as DeBERTa's pos_key_proj)."""
    found = []
    for path in paths:
        try:
            layer.get_submodule(path)
        except AttributeError:
            continue
        found.append(path)
    return tuple(found)


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(module.get_submodule(parent), name, value)


def _resize(layer: nn.Module, path: str, out_features: int | None = None, in_features: int | None = None) -> None:
    """Replace a Linear by an uninitialised one of the new shape (its weights are loaded afterwards)."""
    old = layer.get_submodule(path)
    with warnings.catch_warnings():  # "initializing zero-element tensors" for emptied layers
        warnings.simplefilter("ignore", UserWarning)
        new = skip_init(nn.Linear, old.in_features if in_features is None else in_features,
                        old.out_features if out_features is None else out_features,
                        bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
    _set(layer, path, new)


def shrink(model: nn.Module, heads_kept: list[int], neurons_kept: list[int],
           bias_heads: list[list[int]] | None = None) -> None:
    """Give a freshly built model of a supported family ``heads_kept[l]`` heads and
    ``neurons_kept[l]`` FFN neurons in layer ``l`` (uninitialised: load the weights afterwards).
    bias_heads: for families with a shared position bias, the original heads each layer kept (default:
    the first ones)."""
    layout = LAYOUTS[model.config.model_type]
    layers = model.base_model.get_submodule(layout.layers)
    if not len(heads_kept) == len(neurons_kept) == len(layers):
        raise ValueError(f"the model has {len(layers)} layers but heads_kept has {len(heads_kept)} entries "
                         f"and neurons_kept {len(neurons_kept)}")
    if layout.position_bias and bias_heads is None:   # not said: the first heads
        bias_heads = [list(range(count)) for count in heads_kept]
    if layout.position_bias and (len(bias_heads) != len(layers) or any(
            len(kept) != count for kept, count in zip(bias_heads, heads_kept) if count)):
        raise ValueError(f"position_heads {bias_heads!r} does not give the indices of the {heads_kept} kept heads")
    for index, (layer, heads, neurons) in enumerate(zip(layers, heads_kept, neurons_kept)):
        attention = layer.get_submodule(layout.attention)
        head_size = getattr(attention, "attention_head_size", None) or attention.head_dim
        width = heads * head_size
        if width != layer.get_submodule(layout.attn_out).in_features:
            for path in layout.qkv + present(layer, layout.head_rows):
                _resize(layer, path, out_features=3 * width if layout.fused_qkv else width)
            _resize(layer, layout.attn_out, in_features=width)
            if heads == 0:
                owns_out = layout.attn_out.startswith(layout.attention + ".")
                out_name = layout.attn_out.rsplit(".", 1)[1] if owns_out else None
                _set(layer, layout.attention, HeadlessAttention(attention, out_name))
            else:
                for attr in ("num_attention_heads", "n_heads"):
                    if hasattr(attention, attr):
                        setattr(attention, attr, heads)
                if hasattr(attention, "all_head_size"):
                    attention.all_head_size = width
        if layout.position_bias and heads:
            keep_bias_heads(layer.get_submodule(layout.attention), bias_heads[index])
        if neurons != layer.get_submodule(layout.ffn_out).in_features:
            _resize(layer, layout.ffn_in, out_features=2 * neurons if layout.gated_ffn else neurons)
            _resize(layer, layout.ffn_out, in_features=neurons)


def _pruned_class(name: str) -> type:
    """``KPrune<name>``: transformers' ``<name>`` shrunk to the config's ``kprune`` block, if any."""
    base = getattr(transformers, name)

    def __init__(self, config, *args, **kwargs):
        base.__init__(self, config, *args, **kwargs)
        block = getattr(config, "kprune", None)
        if block:
            shrink(self, block["heads_kept"], block["neurons_kept"], block.get("position_heads"))

    doc = f"transformers.{name} with the per-layer heads and neurons of the config's ``kprune`` block."
    return type(CLASS_PREFIX + name, (base,), {"__init__": __init__, "__module__": __name__, "__doc__": doc})


def __getattr__(name: str) -> type:
    """The ``KPrune<transformers class>`` classes, built on first use (and then kept)."""
    base = name.removeprefix(CLASS_PREFIX)
    if name.startswith(CLASS_PREFIX) and base in BASE_CLASSES:
        globals()[name] = _pruned_class(base)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
