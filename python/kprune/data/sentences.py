"""Unlabelled sentences for sentence-embedding models: from any GLUE-style source, labels ignored.

An embedding model embeds one text at a time, so every text of an example (both sentences of a pair)
is a separate sentence. The source's layout is recognised by trying the readers of the GLUE tasks,
pair tasks first (a file with ``sentence1``/``sentence2`` gives both columns, not only the first).
"""
from __future__ import annotations

import logging
import os
import random

import torch

from ..errors import DataError
from ..tasks import TASKS
from .encoding import _check_lengths
from .loading import load_examples

logger = logging.getLogger(__name__)

# pair tasks before single-sentence ones; QA sources are not sentence data
_LAYOUTS = [name for name, spec in TASKS.items() if spec.kind != "qa" and spec.is_pair] + \
           [name for name, spec in TASKS.items() if spec.kind != "qa" and not spec.is_pair]


def load_sentences(path: str | os.PathLike, split: str = "train") -> list[str]:
    """Every distinct non-empty text of ``split`` of a GLUE folder/TSV, CSV or JSONL file (labels ignored),
    in file order; the columns are those of the first GLUE task whose reader accepts the source.

    Raises:
        DataError: no GLUE task's layout fits the source (the message gives each reader's complaint).
    """
    complaints = []
    for task in _LAYOUTS:
        try:
            examples = load_examples(task, path, split)
        except DataError as error:
            complaints.append(f"{task}: {error}")
            continue
        sentences = list(dict.fromkeys(t for e in examples for t in e.texts if t and t.strip()))
        if sentences:
            logger.info("read %d sentences of %s with the %s layout", len(sentences), os.fspath(path), task)
            return sentences
        complaints.append(f"{task}: no non-empty texts")
    raise DataError(f"no sentences found in {os.fspath(path)!r} (split {split!r}); tried the GLUE layouts: "
                    + "; ".join(complaints[:3]) + (" ..." if len(complaints) > 3 else ""))


def sample_sentences(path: str | os.PathLike, tokenizer, num_tokens: int = 100_000, seed: int = 0,
                     max_length: int = 128, split: str = "train") -> list[dict]:
    """The pruning sample of an embedding model: single sentences in ``random.Random(seed)`` order,
    tokenized (truncated to ``max_length``), until their tokens reach ``num_tokens`` or the source ends."""
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens <= 0:
        raise DataError(f"num_tokens must be a positive integer, got {num_tokens!r}")
    _check_lengths(max_length, 1)
    sentences = load_sentences(path, split)
    random.Random(seed).shuffle(sentences)
    taken, total, chunk = [], 0, 256
    for begin in range(0, len(sentences), chunk):
        encoded = tokenizer(sentences[begin:begin + chunk], truncation=True, max_length=max_length)
        for i, ids in enumerate(encoded["input_ids"]):
            feature = {"input_ids": torch.tensor(ids, dtype=torch.long)}
            if "token_type_ids" in encoded:
                feature["token_type_ids"] = torch.tensor(encoded["token_type_ids"][i], dtype=torch.long)
            taken.append(feature)
            total += len(ids)
            if total >= num_tokens:
                break
        if total >= num_tokens:
            break
    logger.info("embedding sample: %d sentences, %d tokens", len(taken), total)
    return taken
