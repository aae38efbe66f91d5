"""encode: tokenize examples into unpadded model features (classification/regression pairs, QA windows)."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import ConfigError, DataError
from ..tasks import TaskSpec, get_task
from .example import Example

#: QA: a question keeps at most this share of ``max_length`` tokens; the rest is for the context.
MAX_QUESTION_FRACTION = 0.5
_ENCODE_CHUNK = 1024


def _check_lengths(max_length: int, doc_stride: int) -> None:
    if not isinstance(max_length, int) or max_length < 8:
        raise ConfigError(f"max_length must be an integer of at least 8 tokens, got {max_length!r}")
    if not isinstance(doc_stride, int) or doc_stride < 1:
        raise ConfigError(f"doc_stride must be a positive integer, got {doc_stride!r}")


def _text_counts(spec: TaskSpec) -> tuple[int, ...]:
    return (1, 2) if spec.pair_optional else (len(spec.text_fields),)


def _encode_classification(spec: TaskSpec, examples: Sequence[Example], tokenizer,
                           max_length: int) -> list[dict]:
    features: list[dict] = []
    for begin in range(0, len(examples), _ENCODE_CHUNK):
        chunk = examples[begin:begin + _ENCODE_CHUNK]
        count = len(chunk[0].texts)
        for example in chunk:
            if len(example.texts) != count or count not in _text_counts(spec):
                raise DataError(f"an example of task {spec.name!r} has {len(example.texts)} texts, "
                                f"expected {' or '.join(map(str, _text_counts(spec)))} (the same in every example)")
        first = [e.texts[0] for e in chunk]
        second = [e.texts[1] for e in chunk] if count == 2 else None
        encoded = tokenizer(first, second, truncation=True, max_length=max_length)
        has_types = "token_type_ids" in encoded
        for i, example in enumerate(chunk):
            feature = {"input_ids": torch.tensor(encoded["input_ids"][i], dtype=torch.long)}
            if has_types:
                feature["token_type_ids"] = torch.tensor(encoded["token_type_ids"][i], dtype=torch.long)
            if example.label is not None:
                feature["labels"] = float(example.label) if spec.kind == "regression" else int(example.label)
            features.append(feature)
    return features


def _question_lengths(tokenizer, questions: list[str], limit: int) -> tuple[list[str], list[int]]:
    """Cut questions to at most ``limit`` tokens; return the questions and their token counts."""
    encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    cut, lengths = [], []
    for question, ids, offsets in zip(questions, encoded["input_ids"], encoded["offset_mapping"]):
        if len(ids) > limit:
            question = question[:offsets[limit - 1][1]]
            ids = tokenizer(question, add_special_tokens=False)["input_ids"]
        cut.append(question)
        lengths.append(len(ids))
    return cut, lengths


def _answer_tokens(offsets: list, sequence_ids: list, start_char: int, end_char: int) -> tuple[int, int]:
    """Token start/end of the character span inside this window's context, or (0, 0) if not inside."""
    context_tokens = [k for k, s in enumerate(sequence_ids) if s == 1]
    if not context_tokens:
        return 0, 0
    first, last = context_tokens[0], context_tokens[-1]
    if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
        return 0, 0
    start = first
    while start <= last and offsets[start][0] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def _encode_qa(spec: TaskSpec, examples: Sequence[Example], tokenizer, max_length: int,
               doc_stride: int) -> list[dict]:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"extractive QA needs a fast tokenizer (for offset mappings); got "
                          f"{type(tokenizer).__name__}: load it with "
                          f"AutoTokenizer.from_pretrained(..., use_fast=True)")
    for example in examples:
        if example.question is None or example.context is None:
            raise DataError(f"an example of task {spec.name!r} has no question/context (id {example.id!r})")
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    question_limit = max(1, int(max_length * MAX_QUESTION_FRACTION))
    questions, lengths = _question_lengths(tokenizer, [e.question.lstrip() for e in examples],
                                           question_limit)
    # doc_stride is the step between the starts of consecutive windows (original BERT run_squad);
    # the tokenizer's `stride` is the overlap, which is what is left of a window after that step.
    groups: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        available = max_length - length - specials
        if available < 1:
            raise ConfigError(f"max_length {max_length} leaves no room for the context after a "
                              f"{length}-token question; use a larger max_length")
        groups.setdefault(max(0, available - doc_stride), []).append(index)
    per_example: list[list[dict]] = [[] for _ in examples]
    for overlap, indices in groups.items():
        for begin in range(0, len(indices), _ENCODE_CHUNK):
            chunk = indices[begin:begin + _ENCODE_CHUNK]
            encoded = tokenizer([questions[i] for i in chunk], [examples[i].context for i in chunk],
                                truncation="only_second", max_length=max_length, stride=overlap,
                                return_overflowing_tokens=True, return_offsets_mapping=True)
            has_types = "token_type_ids" in encoded
            sample_map = encoded["overflow_to_sample_mapping"]
            for f in range(len(encoded["input_ids"])):
                index = chunk[sample_map[f]]
                example = examples[index]
                sequence_ids = encoded.sequence_ids(f)
                offsets = [tuple(o) for o in encoded["offset_mapping"][f]]
                feature: dict[str, Any] = {
                    "input_ids": torch.tensor(encoded["input_ids"][f], dtype=torch.long)}
                if has_types:
                    feature["token_type_ids"] = torch.tensor(encoded["token_type_ids"][f], dtype=torch.long)
                if example.is_impossible:
                    feature["start_positions"], feature["end_positions"] = 0, 0
                elif example.answers:
                    located = [a for a in example.answers if a["answer_start"] >= 0]
                    if located:
                        start_char = located[0]["answer_start"]
                        end_char = start_char + len(located[0]["text"])
                        start, end = _answer_tokens(offsets, sequence_ids, start_char, end_char)
                    else:
                        start, end = 0, 0  # no answer text found in the context (see _aligned)
                    feature["start_positions"], feature["end_positions"] = start, end
                feature["example_index"] = index
                feature["offset_mapping"] = [o if s == 1 else None for o, s in zip(offsets, sequence_ids)]
                per_example[index].append(feature)
    return [feature for features in per_example for feature in features]


def encode(task: str, examples: Sequence[Example], tokenizer, max_length: int | None = None,
           doc_stride: int | None = None) -> list[dict]:
    """Tokenize examples into model features (unpadded 1-D ``torch.long`` tensors).

    Classification/regression: one feature per example with ``input_ids``, ``token_type_ids`` (if the
    tokenizer makes them) and ``labels`` (int class or float score) when the label is known; pairs are
    truncated longest-first to ``max_length``.

    QA (needs a fast tokenizer): question first, context second, truncated ``only_second``; a long
    context gives several windows, whose starts are ``doc_stride`` context tokens apart (the original
    BERT ``run_squad`` meaning; consecutive windows overlap by what is left of a window after that
    step). Questions longer than half of ``max_length`` are cut. Each window's feature holds
    ``start_positions``/``end_positions`` (token indices of the first answer found in the context;
    0, the CLS token, when the answer is not inside the window or the question is unanswerable;
    absent when the answers are unknown), ``example_index`` (position in ``examples``) and
    ``offset_mapping`` (character ``(start, end)`` in the context per token, ``None`` for tokens
    outside the context). ``max_length`` / ``doc_stride`` default to the task's (128; SQuAD 384 and 128).
    """
    spec = get_task(task)
    max_length, doc_stride = spec.lengths(max_length, doc_stride)
    _check_lengths(max_length, doc_stride)
    examples = list(examples)
    if not examples:
        return []
    if spec.kind == "qa":
        return _encode_qa(spec, examples, tokenizer, max_length, doc_stride)
    return _encode_classification(spec, examples, tokenizer, max_length)
