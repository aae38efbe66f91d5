"""Architectures as data: where each supported encoder family keeps its sublayers.

An :class:`Architecture` names, per family, the modules of one layer and the config fields that
describe its shape; :class:`EncoderAdapter` binds one to a concrete model and exposes what the
algorithm needs (layers, embeddings, the task head) without any family-specific code elsewhere.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from kprune import deberta, modernbert
from kprune.errors import ConfigError, UnsupportedModelError
from kprune.remote_modeling import kept_bias_heads


@dataclass(frozen=True)
class Architecture:
    family: str
    base: str                 # attribute of the task model holding the encoder
    layers: str               # path from the encoder to its ModuleList of layers
    query: str                # the rest are paths inside one layer
    key: str
    value: str
    attn_out: str
    attn_norm: str
    ffn_in: str
    ffn_out: str
    ffn_norm: str
    ffn_act: str
    headless_target: str      # module replaced when a layer keeps no heads
    heads_field: str          # config fields
    neurons_field: str
    hidden_field: str
    act_field: str
    # path from the encoder to the module that computes one position bias for all heads, shared by every
    # layer (MPNet's relative attention bias, compute_position_bias): each layer takes its kept heads' slices
    position_bias: str | None = None
    # paths, in a layer, of further projections with one block of rows per head, where the layer has them
    # (DeBERTa's pos_key_proj / pos_query_proj): sliced with the heads
    head_rows: tuple[str, ...] = ()
    # path from the encoder to the module holding a relative-position table shared by every layer whose
    # attention mixes it into the scores (DeBERTa's disentangled attention, computed by kprune.deberta)
    relative: str | None = None
    fused_qkv: bool = False       # query, key and value are one projection (all three paths name it)
    gated_ffn: bool = False       # ffn_in gives [value, gate] halves: a neuron is a row of each and a column of ffn_out
    pre_norm: bool = False        # attn_norm / ffn_norm normalise the sublayer's input, not the residual sum
    final_norm: str | None = None  # path from the encoder to a norm after the last layer (pre-norm encoders)
    token_types: bool = True      # the embeddings take token_type_ids


_BERT_LIKE = dict(
    layers="encoder.layer", query="attention.self.query", key="attention.self.key",
    value="attention.self.value", attn_out="attention.output.dense", attn_norm="attention.output.LayerNorm",
    ffn_in="intermediate.dense", ffn_out="output.dense", ffn_norm="output.LayerNorm",
    ffn_act="intermediate.intermediate_act_fn", headless_target="attention.self",
    heads_field="num_attention_heads", neurons_field="intermediate_size", hidden_field="hidden_size",
    act_field="hidden_act",
)

ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(family="bert", base="bert", **_BERT_LIKE),
    "roberta": Architecture(family="roberta", base="roberta", **_BERT_LIKE),
    "xlm-roberta": Architecture(family="xlm-roberta", base="roberta", **_BERT_LIKE),
    "electra": Architecture(family="electra", base="electra", **_BERT_LIKE),
    "distilbert": Architecture(
        family="distilbert", base="distilbert", layers="transformer.layer", query="attention.q_lin",
        key="attention.k_lin", value="attention.v_lin", attn_out="attention.out_lin",
        attn_norm="sa_layer_norm", ffn_in="ffn.lin1", ffn_out="ffn.lin2", ffn_norm="output_layer_norm",
        ffn_act="ffn.activation", headless_target="attention", heads_field="n_heads",
        neurons_field="hidden_dim", hidden_field="dim", act_field="activation", token_types=False,
    ),
    "mpnet": Architecture(**dict(
        _BERT_LIKE, family="mpnet", base="mpnet", query="attention.attn.q", key="attention.attn.k",
        value="attention.attn.v", attn_out="attention.attn.o", attn_norm="attention.LayerNorm",
        headless_target="attention.attn", position_bias="encoder")),
    "deberta-v2": Architecture(**dict(
        _BERT_LIKE, family="deberta-v2", base="deberta", query="attention.self.query_proj",
        key="attention.self.key_proj", value="attention.self.value_proj",
        head_rows=("attention.self.pos_key_proj", "attention.self.pos_query_proj"), relative="encoder")),
    "modernbert": Architecture(
        family="modernbert", base="model", layers="layers", query="attn.Wqkv", key="attn.Wqkv", value="attn.Wqkv",
        attn_out="attn.Wo", attn_norm="attn_norm", ffn_in="mlp.Wi", ffn_out="mlp.Wo", ffn_norm="mlp_norm",
        ffn_act="mlp.act", headless_target="attn", heads_field="num_attention_heads",
        neurons_field="intermediate_size", hidden_field="hidden_size", act_field="hidden_activation",
        fused_qkv=True, gated_ffn=True, pre_norm=True, final_norm="final_norm", token_types=False),
}

# a bare encoder (*Model) is a sentence-embedding model: its "head" is mean pooling + L2 normalisation
HEAD_KINDS = {"ForSequenceClassification": "classification", "ForQuestionAnswering": "qa", "Model": "embedding"}

# config activation names -> kprune_ext activation names
ACTIVATION_NAMES = {
    "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
    "relu": "relu", "silu": "silu", "swish": "silu",
}


_NO_NORM = nn.Identity()   # after the residual sum of a pre-norm sublayer


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_get(module, parent) if parent else module, name, value)


def architecture_of(model: nn.Module) -> Architecture:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"model type {model_type!r} ({type(model).__name__}) is not supported; "
            f"supported model types: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model_type]


def head_kind_of(model: nn.Module) -> str:
    name = type(model).__name__
    for suffix, kind in HEAD_KINDS.items():
        if name.endswith(suffix):
            return kind
    raise UnsupportedModelError(
        f"model class {name!r} has no supported task head; supported heads: "
        + ", ".join(f"*{s}" for s in HEAD_KINDS)
    )


@dataclass
class LayerView:
    """The modules of one encoder layer, by role."""

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_out: nn.Linear
    attn_norm: nn.LayerNorm
    ffn_in: nn.Linear
    ffn_out: nn.Linear
    ffn_norm: nn.LayerNorm
    ffn_act: nn.Module
    head_size: int
    position_bias: Callable[[int], torch.Tensor] | None = None   # seq -> [1, heads kept, seq, seq], if any
    # the family's own attention, (x, key_mask) -> context, where it is not scaled dot-product (DeBERTa)
    context: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # pre-norm layers: the norms of the sublayers' inputs (attn_norm / ffn_norm are then identities)
    attn_input_norm: nn.Module | None = None
    ffn_input_norm: nn.Module | None = None
    gated: bool = False       # ffn_in gives [value, gate]: act = ffn_act(value) * gate
    # (x, key_mask) -> (q, k, v [batch, heads, seq, head_size], attention mask): a family's own attention inputs
    attention_inputs: Callable | None = None

    @property
    def plain_ffn(self) -> bool:
        """A post-norm, ungated FFN (what the compiled masked-FFN op computes)."""
        return not self.gated and self.ffn_input_norm is None

    @property
    def num_heads(self) -> int:
        return self.attn_out.in_features // self.head_size

    @property
    def num_neurons(self) -> int:
        return self.ffn_out.in_features


class EncoderAdapter:
    """Binds an :class:`Architecture` to one model."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.arch = architecture_of(model)
        self.head_kind = head_kind_of(model)
        config = model.config
        self.hidden_size = int(getattr(config, self.arch.hidden_field))
        self.original_heads = int(getattr(config, self.arch.heads_field))
        self.original_neurons = int(getattr(config, self.arch.neurons_field))
        self.head_size = self.hidden_size // self.original_heads
        act = getattr(config, self.arch.act_field)
        if not isinstance(act, str) or act not in ACTIVATION_NAMES:
            raise UnsupportedModelError(
                f"activation {act!r} is not supported; supported: {', '.join(sorted(ACTIVATION_NAMES))}"
            )
        self.activation = ACTIVATION_NAMES[act]
        self.relative = None     # DeBERTa's position rows per head, for the FLOPs model
        if self.arch.relative is not None:
            deberta.check_supported(config)
            self.relative = deberta.relative_terms(config)
        if self.arch.family == "modernbert":
            modernbert.check_config(config)

    @property
    def encoder(self) -> nn.Module:
        if self.head_kind == "embedding":   # the bare encoder is the model itself
            return self.model
        return getattr(self.model, self.arch.base)

    @property
    def layers(self) -> nn.ModuleList:
        return _get(self.encoder, self.arch.layers)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer(self, index: int) -> LayerView:
        layer = self.layers[index]
        a = self.arch
        attn_norm, ffn_norm = _get(layer, a.attn_norm), _get(layer, a.ffn_norm)
        pre = a.pre_norm
        return LayerView(
            query=_get(layer, a.query), key=_get(layer, a.key), value=_get(layer, a.value),
            attn_out=_get(layer, a.attn_out), attn_norm=_NO_NORM if pre else attn_norm,
            ffn_in=_get(layer, a.ffn_in), ffn_out=_get(layer, a.ffn_out), ffn_norm=_NO_NORM if pre else ffn_norm,
            ffn_act=_get(layer, a.ffn_act), head_size=self.head_size,
            position_bias=None if a.position_bias is None else partial(self.position_bias, index),
            context=None if a.relative is None else partial(self.relative_context, index),
            attn_input_norm=attn_norm if pre else None, ffn_input_norm=ffn_norm if pre else None, gated=a.gated_ffn,
            attention_inputs=partial(modernbert.attention_inputs, self.encoder, layer) if a.family == "modernbert"
            else None,
        )

    def position_bias(self, index: int, seq: int) -> torch.Tensor:
        """Layer ``index``'s slices [1, heads kept, seq, seq] of the position bias shared by all layers."""
        table = _get(self.encoder, self.arch.position_bias)
        bias = table.compute_position_bias(next(table.parameters()).new_zeros(1, seq, 1))   # reads x's shape only
        return bias.index_select(1, kept_bias_heads(_get(self.layers[index], self.arch.headless_target), bias.shape[1]))

    def relative_context(self, index: int, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """Layer ``index``'s disentangled attention (DeBERTa) for its kept heads: [batch, seq, heads * d_h]."""
        table = _get(self.encoder, self.arch.relative).get_rel_embedding()
        return deberta.disentangled_context(_get(self.layers[index], self.arch.headless_target), table, x, key_mask)

    def replace_in_layer(self, index: int, path: str, module: nn.Module) -> None:
        _set(self.layers[index], path, module)

    def get_in_layer(self, index: int, path: str) -> nn.Module:
        return _get(self.layers[index], path)

    # -- embeddings and task head -------------------------------------------------------------

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """Hidden states entering layer 0: [batch, seq, d]."""
        enc = self.encoder
        if not self.arch.token_types:
            return enc.embeddings(input_ids=input_ids)
        hidden = enc.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        project = getattr(enc, "embeddings_project", None)
        return project(hidden) if project is not None else hidden

    def head(self, hidden: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Task logits from the last hidden states: [batch, labels] or, for QA, [batch, seq, 2]; for an
        embedding model the mean-pooled (over key_mask's real tokens), L2-normalised embedding [batch, d]."""
        model = self.model
        if self.arch.final_norm is not None:
            hidden = _get(self.encoder, self.arch.final_norm)(hidden)
        if self.head_kind == "embedding":
            return mean_pool_normalise(hidden, key_mask)
        if self.arch.family == "modernbert":
            return modernbert.task_head(model, self.head_kind, hidden, key_mask)
        if self.head_kind == "qa":
            return model.qa_outputs(hidden)
        family = self.arch.family
        if family == "bert":
            return model.classifier(model.dropout(self.encoder.pooler(hidden)))
        if family == "deberta-v2":   # ContextPooler: dense + activation on token 0
            return model.classifier(model.dropout(model.pooler(hidden)))
        if family == "distilbert":
            pooled = F.relu(model.pre_classifier(hidden[:, 0]))
            return model.classifier(model.dropout(pooled))
        return model.classifier(hidden)  # roberta, xlm-roberta, electra: head reads token 0 itself

    def units_kept(self) -> tuple[list[int], list[int]]:
        heads = [self.layer(i).num_heads for i in range(self.num_layers)]
        neurons = [self.layer(i).num_neurons for i in range(self.num_layers)]
        return heads, neurons


def mean_pool_normalise(hidden: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Sentence embeddings [batch, d]: the mean of the real tokens' hidden states (key_mask: [batch, seq],
    True or 1 on real tokens; None: every token), L2-normalised, as sentence-transformers computes them."""
    if key_mask is None:
        pooled = hidden.mean(1)
    else:
        weights = key_mask.to(hidden.dtype)[..., None]
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    return F.normalize(pooled, p=2.0, dim=-1, eps=1e-12)


def check_head(adapter: EncoderAdapter, task: str) -> None:
    """Refuse a task the model's head cannot serve (e.g. task='qa' on a classifier)."""
    name = type(adapter.model).__name__
    if (task == "embedding") != (adapter.head_kind == "embedding"):
        raise ConfigError(f"task={task!r} does not fit {name}: task='embedding' takes a bare encoder (*Model, "
                          "e.g. a sentence-transformers folder), the other tasks a model with a task head")
    if task == "embedding":
        return
    labels = int(getattr(adapter.model.config, "num_labels", 0))
    if task == "qa" and adapter.head_kind != "qa":
        raise ConfigError(f"task='qa' needs a *ForQuestionAnswering model, got {type(adapter.model).__name__}")
    if task != "qa" and adapter.head_kind == "qa":
        raise ConfigError(f"task={task!r} needs a *ForSequenceClassification model, got {type(adapter.model).__name__}")
    if task == "regression" and labels != 1:
        raise ConfigError(f"task='regression' needs a head with num_labels=1, the model has {labels}")
    if task == "classification" and labels < 2:
        raise ConfigError(f"task='classification' needs a head with num_labels >= 2, the model has {labels}")


def encoder_layers(model: nn.Module) -> list[LayerView]:
    """The modules of every encoder layer of ``model`` by role (query, key, value, attn_out, attn_norm,
    ffn_in, ffn_out, ffn_norm, ffn_act), whatever its family; refuses unsupported models by name."""
    adapter = EncoderAdapter(model)
    return [adapter.layer(l) for l in range(adapter.num_layers)]
