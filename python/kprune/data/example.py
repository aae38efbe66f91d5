"""Shared pieces of the readers: the Example record, labels, column matching and malformed-row counting."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ..errors import DataError
from ..tasks import TaskSpec

logger = logging.getLogger(__name__)

#: Share of malformed rows above which a file is rejected rather than cleaned.
MAX_MALFORMED_FRACTION = 0.10


@dataclass
class Example:
    """One example of a task.

    ``texts`` holds the one or two input texts (QA: question, context). ``label`` is a class id (int),
    a regression score (float) or ``None`` when unknown (test files, QA). QA examples also carry
    ``id``, ``question``, ``context``, ``answers`` (``[{"text", "answer_start"}]``, character offsets into
    ``context``) and ``is_impossible`` (SQuAD v2 questions without an answer).
    """

    texts: tuple[str, ...]
    label: int | float | None = None
    id: str | None = None
    question: str | None = None
    context: str | None = None
    answers: list[dict] = field(default_factory=list)
    is_impossible: bool = False


class _Malformed(Exception):
    """A row that cannot be read; it is skipped and counted."""


def _label_help(spec: TaskSpec) -> str:
    names = f" or the names {list(spec.label_names)}" if spec.label_names else ""
    return f"task {spec.name!r} has {spec.num_labels} classes: ids 0..{spec.num_labels - 1}{names}"


def _parse_label(spec: TaskSpec, raw: Any, where: str) -> int | float | None:
    """Parse one label. Unparsable -> _Malformed (skipped); parsable but out of range -> DataError."""
    if raw is None:
        return None
    if spec.kind == "regression":
        if isinstance(raw, bool):
            raise _Malformed(f"score {raw!r} is not a number")
        try:
            value = float(raw.strip() if isinstance(raw, str) else raw)
        except (TypeError, ValueError):
            raise _Malformed(f"score {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise _Malformed(f"score {raw!r} is not a finite number")
        return value
    # classification
    if isinstance(raw, str):
        text = raw.strip()
        if spec.label_names and text.lower() in spec.label_names:
            return spec.label_names.index(text.lower())
        try:
            number = float(text)
        except ValueError:
            raise _Malformed(f"label {raw!r} is not a class ({_label_help(spec)})") from None
    elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
        number = float(raw)
    else:
        raise _Malformed(f"label {raw!r} is not a class ({_label_help(spec)})")
    if not number.is_integer():
        raise _Malformed(f"label {raw!r} is not a class ({_label_help(spec)})")
    value = int(number)
    if not 0 <= value < spec.num_labels:
        raise DataError(f"label {raw!r} {where} does not fit: {_label_help(spec)}")
    return value


def _match_column(names: Iterable[str], candidates: Sequence[str]) -> str | None:
    """The first of ``candidates`` present in ``names`` (case-insensitive); the name as spelled in ``names``."""
    by_lower = {}
    for name in names:
        if isinstance(name, str):
            by_lower.setdefault(name.strip().lower(), name)
    for candidate in candidates:
        if candidate.lower() in by_lower:
            return by_lower[candidate.lower()]
    return None


def _resolve_columns(spec: TaskSpec, names: Sequence[str], source: str) -> tuple[list[str], str | None]:
    """Map the task's texts and label onto the columns ``names`` of a file."""
    text_columns: list[str] = []
    for position, aliases in enumerate(spec.text_aliases or tuple((f,) for f in spec.text_fields)):
        # A column already taken by an earlier text cannot be the next one (qnli: question, sentence).
        available = [n for n in names if n not in text_columns]
        column = _match_column(available, aliases)
        if column is None and position > 0 and spec.pair_optional:
            break  # a generic task without a second text column: single texts
        if column is None:
            raise DataError(
                f"{source} has columns {list(names)}; task {spec.name!r} needs text {position + 1} "
                f"in a column named one of {list(aliases)}"
            )
        text_columns.append(column)
    label_column = _match_column([n for n in names if n not in text_columns], spec.label_aliases)
    return text_columns, label_column


class _RowCounter:
    """Counts malformed rows of one file and decides between a warning and a DataError."""

    def __init__(self, source: str):
        self.source = source
        self.good = 0
        self.bad = 0
        self.first_bad: str | None = None

    def skip(self, line: int | str, reason: str) -> None:
        self.bad += 1
        if self.first_bad is None:
            self.first_bad = f"line {line} ({reason})"

    def finish(self) -> None:
        total = self.good + self.bad
        if total == 0:
            raise DataError(f"{self.source} holds no examples")
        if self.bad == 0:
            return
        if self.good == 0 or self.bad > MAX_MALFORMED_FRACTION * total:
            raise DataError(
                f"{self.bad} of {total} rows of {self.source} are malformed (more than "
                f"{MAX_MALFORMED_FRACTION:.0%} allowed), e.g. {self.first_bad}; is it a file of task data "
                f"in the expected format?"
            )
        logger.warning("skipped %d malformed rows of %s, e.g. %s", self.bad, self.source, self.first_bad)



def _example_from_record(spec: TaskSpec, record: dict, text_columns: list[str], label_column: str | None,
                         where: str) -> Example:
    texts = []
    for column in text_columns:
        value = record.get(column)
        if value is None:
            raise _Malformed(f"column {column!r} is missing")
        texts.append(value if isinstance(value, str) else str(value))
    label = None
    if label_column is not None:
        raw = record.get(label_column)
        if isinstance(raw, str) and raw.strip() == "":
            raise _Malformed(f"{label_column!r} is empty")
        if isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw == -1:
            label = None  # `datasets` marks unlabelled (test) rows with -1 (STS-B scores are 0..5)
        else:
            label = _parse_label(spec, raw, where)
    return Example(texts=tuple(texts), label=label)
