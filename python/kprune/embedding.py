"""Sentence embeddings of any encoder and their STS score (no fine-tuning).

:func:`embed_sentences` runs the encoder (a task model's own encoder, ``model.base_model``) and
takes the mean of the real tokens' last hidden states, L2-normalised: the pipeline of
sentence-transformers' mean-pooling models and kprune's ``task="embedding"`` head.
:func:`evaluate_sts` scores it on an STS-B split by the Spearman correlation between the cosine
similarity of each pair's two embeddings and the gold similarity.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from .adapters import mean_pool_normalise
from .data import collate, load_examples
from .errors import ConfigError, DataError
from .evaluation import _accepts, _model_device
from .metrics import pearson, spearmanr


def embed_sentences(model: torch.nn.Module, tokenizer, sentences: Sequence[str], batch_size: int = 64,
                    max_length: int = 128) -> torch.Tensor:
    """Normalised mean-pooled embeddings [len(sentences), d] (float32, CPU), in the order given."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not sentences:
        raise DataError("no sentences to embed")
    encoder = getattr(model, "base_model", model)
    device = _model_device(encoder)
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    encoded = tokenizer(list(sentences), truncation=True, max_length=max_length)
    features = [{"input_ids": torch.tensor(ids)} for ids in encoded["input_ids"]]
    if "token_type_ids" in encoded and _accepts(encoder, "token_type_ids"):
        for feature, types in zip(features, encoded["token_type_ids"]):
            feature["token_type_ids"] = torch.tensor(types)
    order = sorted(range(len(features)), key=lambda i: features[i]["input_ids"].numel())
    out = torch.empty(len(features), int(model.config.hidden_size))
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode():
            for begin in range(0, len(order), batch_size):
                rows = order[begin:begin + batch_size]
                batch = {k: v.to(device) for k, v in collate([features[i] for i in rows], pad).items()}
                hidden = encoder(**batch).last_hidden_state
                out[torch.tensor(rows)] = mean_pool_normalise(hidden.float(), batch["attention_mask"]).cpu()
    finally:
        encoder.train(was_training)
    return out


def evaluate_sts(model: torch.nn.Module, tokenizer, path: str | os.PathLike, split: str = "dev",
                 batch_size: int = 64, max_length: int = 128, max_examples: int | None = None) -> dict[str, float]:
    """STS-B by cosine similarity of embeddings: ``{"spearman", "pearson", "num_examples"}`` (-1..1).

    Raises:
        DataError: unlabelled pairs (the test split) or no data.
    """
    examples = load_examples("stsb", path, split)
    if max_examples is not None:
        if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
            raise ConfigError(f"max_examples must be a positive integer or None, got {max_examples!r}")
        examples = examples[:max_examples]
    if not examples or any(e.label is None for e in examples):
        raise DataError(f"{os.fspath(path)!r} (split {split!r}) has no labelled sentence pairs to score")
    first = embed_sentences(model, tokenizer, [e.texts[0] for e in examples], batch_size, max_length)
    second = embed_sentences(model, tokenizer, [e.texts[1] for e in examples], batch_size, max_length)
    cosine = (first.double() * second.double()).sum(-1).numpy()
    gold = [float(e.label) for e in examples]
    return {"spearman": spearmanr(cosine, gold), "pearson": pearson(cosine, gold), "num_examples": len(examples)}
