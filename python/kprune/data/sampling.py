"""The pruning sample (sample_features) and batching of unpadded features (collate)."""
from __future__ import annotations

import logging
import os
import random

import torch
from tqdm.auto import tqdm

from ..errors import DataError
from ..tasks import get_task
from .encoding import _check_lengths, encode
from .loading import load_examples

logger = logging.getLogger(__name__)


def sample_features(task: str, path: str | os.PathLike, tokenizer, num_tokens: int = 100_000, seed: int = 0,
                    max_length: int | None = None, split: str = "train", doc_stride: int | None = None,
                    progress: bool = False) -> list[dict]:
    """The pruning sample: features of randomly drawn examples until ``num_tokens`` tokens are reached.

    Examples of ``split`` are visited in the order of ``random.Random(seed).shuffle`` and encoded
    (see :func:`encode`); features are taken until their total length (no padding is counted: features
    are unpadded) reaches ``num_tokens`` or the split is exhausted. The same seed gives the same sample.
    QA features keep ``example_index`` pointing into the loaded split. ``max_length`` / ``doc_stride``
    default to the task's (:class:`~kprune.tasks.TaskSpec`: 128 tokens; SQuAD 384-token windows, stride 128).
    ``task`` is a task name or a :class:`~kprune.tasks.TaskSpec`; ``progress`` shows a bar while the data is
    read and the sample drawn. A sample of less than half of ``num_tokens`` (a small split) gets a warning.

    Raises:
        DataError: ``num_tokens <= 0``, or no data.
    """
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens <= 0:
        raise DataError(f"num_tokens must be a positive integer, got {num_tokens!r}")
    spec = get_task(task)
    max_length, doc_stride = spec.lengths(max_length, doc_stride)
    _check_lengths(max_length, doc_stride)
    bar = tqdm(total=num_tokens, desc=f"reading {os.fspath(path)}", unit="tok", disable=not progress)
    try:
        examples = load_examples(spec, path, split)
        if not examples:
            raise DataError(f"no examples in {os.fspath(path)!r} (split {split!r})")
        bar.set_description_str(f"drawing the sample from {len(examples)} examples")
        taken = _draw(spec, examples, tokenizer, num_tokens, seed, max_length, doc_stride, bar)
    finally:
        bar.close()
    total = sum(int(f["input_ids"].numel()) for f in taken)
    if total < num_tokens / 2:
        logger.warning("the sample holds %d tokens, less than half of num_tokens=%d: split %r of %s has no more "
                       "(%d examples); knowledge measured on so few tokens is noisy", total, num_tokens, split,
                       os.fspath(path), len(examples))
    elif total < num_tokens:
        logger.info("split %r of %s has only %d tokens (asked for %d): taking all of it",
                    split, os.fspath(path), total, num_tokens)
    logger.info("pruning sample: %d sequences, %d tokens, %.1f tokens on average",
                len(taken), total, total / max(1, len(taken)))
    return taken


def _draw(spec, examples, tokenizer, num_tokens: int, seed: int, max_length: int, doc_stride: int,
          bar) -> list[dict]:
    """Features of examples in seeded random order until ``num_tokens`` tokens."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    # Encode in chunks sized to the budget, so a 100k-token sample of a large split stays cheap.
    chunk_size = 256
    taken: list[dict] = []
    total = 0
    for begin in range(0, len(order), chunk_size):
        chunk = order[begin:begin + chunk_size]
        features = encode(spec, [examples[i] for i in chunk], tokenizer, max_length, doc_stride)
        before = total
        for feature in features:
            if "example_index" in feature:
                feature["example_index"] = chunk[feature["example_index"]]
            taken.append(feature)
            total += int(feature["input_ids"].numel())
            if total >= num_tokens:
                break
        bar.update(min(total, num_tokens) - min(before, num_tokens))
        if total >= num_tokens:
            break
    return taken


def collate(features: list[dict], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Batch unpadded features: right-pad ``input_ids`` (with ``pad_token_id``) and ``token_type_ids``
    (with 0) to the longest, add ``attention_mask`` (1 for real tokens), and stack ``labels``
    (``long`` for classes, ``float`` for scores), ``start_positions`` and ``end_positions`` when every
    feature has them. Other keys (``example_index``, ``offset_mapping``) are left out, so the result can
    be passed to a model as ``model(**batch)``.
    """
    if not features:
        raise DataError("collate needs at least one feature, got an empty list")
    lengths = [int(f["input_ids"].numel()) for f in features]
    width = max(lengths)
    batch_size = len(features)
    input_ids = torch.full((batch_size, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, width), dtype=torch.long)
    with_types = all("token_type_ids" in f for f in features)
    token_type_ids = torch.zeros((batch_size, width), dtype=torch.long) if with_types else None
    for row, (feature, length) in enumerate(zip(features, lengths)):
        input_ids[row, :length] = feature["input_ids"].reshape(-1)
        attention_mask[row, :length] = 1
        if token_type_ids is not None:
            token_type_ids[row, :length] = feature["token_type_ids"].reshape(-1)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None:
        batch["token_type_ids"] = token_type_ids
    for key in ("labels", "start_positions", "end_positions"):
        present = sum(key in f for f in features)
        if present == 0:
            continue
        if present != batch_size:
            raise DataError(f"{present} of {batch_size} features have {key!r}: a batch must be all "
                            f"labelled or all unlabelled")
        values = [f[key] for f in features]
        is_float = any(isinstance(v, float) or (torch.is_tensor(v) and v.is_floating_point())
                       for v in values)
        batch[key] = torch.tensor([float(v) if is_float else int(v) for v in values],
                                  dtype=torch.float32 if is_float else torch.long)
    return batch
