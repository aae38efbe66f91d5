"""Task data: load GLUE/SQuAD/CSV/JSONL examples, tokenize them into features, draw the pruning sample.

Formats :func:`load_examples` reads (``path`` may be a folder, a file or a ``datasets`` hub name):

- GLUE task folders and TSV files (``{split}.tsv``; MNLI ``dev`` is ``dev_matched.tsv``). Read with the
  csv module, tab-separated, no quoting (GLUE texts contain quote characters), ``utf-8-sig`` (a leading
  byte-order mark is dropped). Columns are found by name in the header; CoLA's train/dev files have no
  header (source, label, original label, sentence). A file without a label column (GLUE test files)
  gives examples with ``label=None``.
- CSV (with a header) and JSONL / JSON (a list of objects, or ``{"data": [...]}``) with named columns:
  the task's GLUE column names or the aliases in :class:`kprune.tasks.TaskSpec` (``sentence``,
  ``sentence1``/``sentence2``, ``question``/``sentence``, ``premise``/``hypothesis``, ``text``/``text_pair``,
  ``label``/``labels``; STS-B also ``score``). For QA: ``id``, ``question``, ``context``, ``answers``
  (a list of ``{"text", "answer_start"}`` or the ``datasets`` form ``{"text": [...], "answer_start": [...]}``)
  and optionally ``is_impossible``.
- SQuAD v1.1 / v2.0 JSON files, or a folder holding ``{split}*.json`` (``train-v1.1.json``, ``dev-v2.0.json``).
- A ``datasets`` hub name (``"glue"`` or ``"nyu-mll/glue"`` with the task as configuration, ``"squad"``,
  ``"rajpurkar/squad_v2"``, …) when ``datasets`` is installed and the machine is online.

Labels: class ids (``"0"``, ``"1"``) or the task's class names (``"entailment"``, …); STS-B scores are
floats. A malformed row (wrong number of fields, a label that does not parse) is skipped, and the file
gets one warning counting them; if more than 10% of the rows (or all of them) are malformed the file is
rejected with :class:`~kprune.errors.DataError`. A label that parses but does not fit the task (class 5
for a 2-class task) is a DataError at once: the file is probably for another task.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from .errors import ConfigError, DataError
from .tasks import TaskSpec, get_task

__all__ = ["Example", "load_examples", "encode", "sample_features", "collate"]

logger = logging.getLogger(__name__)

#: Share of malformed rows above which a file is rejected rather than cleaned.
MAX_MALFORMED_FRACTION = 0.10
#: QA: a question keeps at most this share of ``max_length`` tokens; the rest is for the context.
MAX_QUESTION_FRACTION = 0.5

_COLA_COLUMNS = ("source", "label", "original_label", "sentence")
_TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json")
_SPLIT_ALIASES = {"validation": "dev", "valid": "dev", "val": "dev", "eval": "dev",
                  "validation_matched": "dev_matched", "validation_mismatched": "dev_mismatched"}


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


# --------------------------------------------------------------------------------------------------
# Locating the file
# --------------------------------------------------------------------------------------------------

def _normalise_split(split: str) -> str:
    key = str(split).strip().lower()
    return _SPLIT_ALIASES.get(key, key)


def _split_stems(spec: TaskSpec, split: str) -> list[str]:
    if spec.name == "mnli" and split in ("dev", "test"):
        return [f"{split}_matched", split]
    return [split]


def _find_split_file(spec: TaskSpec, folder: Path, split: str) -> Path:
    """The file of ``split`` inside a task folder: ``{split}.ext`` first, else one ``{split}*.ext``."""
    suffixes = (".json", ".jsonl", ".csv") if spec.kind == "qa" else _TABLE_SUFFIXES
    stems = _split_stems(spec, split)
    for stem in stems:
        for suffix in suffixes:
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    for stem in stems:
        matches = sorted(p for p in folder.glob(f"{stem}*") if p.is_file() and p.suffix in suffixes)
        if spec.kind == "qa" and len(matches) > 1:
            # A SQuAD folder may hold both versions: prefer the one of the task.
            tag = "v2" if spec.name == "squad_v2" else "v1"
            preferred = [p for p in matches if tag in p.name]
            matches = preferred or matches
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise DataError(
                f"folder {str(folder)!r} holds several files for split {split!r}: "
                f"{[p.name for p in matches]}; pass the file itself as the path"
            )
    present = sorted(p.name for p in folder.iterdir())[:20]
    tried = [f"{stem}{suffix}" for stem in stems for suffix in suffixes]
    raise DataError(
        f"no file for split {split!r} of task {spec.name!r} in folder {str(folder)!r}: looked for "
        f"{tried} (or {stems[0]}*{suffixes[0]}); the folder holds {present}"
    )


def _looks_like_hub_name(path: str) -> bool:
    if not path or os.path.isabs(path) or path.startswith((".", "~")) or "\\" in path:
        return False
    if Path(path).suffix.lower() in _TABLE_SUFFIXES:
        return False
    return path.count("/") <= 1


# --------------------------------------------------------------------------------------------------
# Labels and columns
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# Sequence classification / regression files
# --------------------------------------------------------------------------------------------------

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


def _read_glue_tsv(spec: TaskSpec, file: Path) -> list[Example]:
    source = str(file)
    with open(file, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = [(reader.line_num, row) for row in reader if row]
    if not rows:
        raise DataError(f"{source} is empty")
    first = [cell.strip() for cell in rows[0][1]]
    if spec.name == "cola" and len(first) == len(_COLA_COLUMNS) and first[1] in ("0", "1"):
        header = list(_COLA_COLUMNS)  # CoLA train/dev: no header line
        body = rows
    else:
        header, body = first, rows[1:]
    text_columns, label_column = _resolve_columns(spec, header, source)
    if label_column is None:
        logger.info("%s has no label column (%s): examples are unlabelled", source, spec.label_field)
    positions = {name: i for i, name in enumerate(header)}
    counter = _RowCounter(source)
    examples: list[Example] = []
    for line, row in body:
        try:
            if len(row) != len(header):
                raise _Malformed(f"{len(row)} fields, expected {len(header)}")
            record = {name: row[positions[name]] for name in text_columns}
            if label_column is not None:
                record[label_column] = row[positions[label_column]]
            examples.append(_example_from_record(spec, record, text_columns, label_column,
                                                 f"at line {line} of {source}"))
            counter.good += 1
        except _Malformed as exc:
            counter.skip(line, str(exc))
    counter.finish()
    return examples


def _records_from_file(file: Path) -> list[tuple[int, Any]]:
    """(line number, record) pairs of a CSV / JSONL / JSON file; an unreadable line's record is None."""
    suffix = file.suffix.lower()
    records: list[tuple[int, Any]] = []
    if suffix == ".csv":
        with open(file, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    records.append((reader.line_num, None))  # wrong number of fields
                else:
                    records.append((reader.line_num, row))
        return records
    with open(file, encoding="utf-8-sig") as handle:
        text = handle.read()
    if suffix == ".json":
        stripped = text.lstrip()
        if stripped.startswith("[") or stripped.startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                data = None  # perhaps JSON lines in a .json file
            if data is not None:
                if isinstance(data, dict) and isinstance(data.get("data"), list):
                    data = data["data"]
                if not isinstance(data, list):
                    raise DataError(f"{file} holds JSON that is neither a list of records nor "
                                    f"{{\"data\": [records]}}")
                return [(i + 1, r) for i, r in enumerate(data)]
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError:
            records.append((number, None))
    return records


def _read_records(spec: TaskSpec, file: Path) -> list[Example]:
    source = str(file)
    records = _records_from_file(file)
    if not records:
        raise DataError(f"{source} is empty")
    names: list[str] = []
    for _, record in records:
        if isinstance(record, dict):
            names = list(record)
            break
    if not names:
        raise DataError(f"{source} holds no records with named columns")
    return _examples_from_records(spec, records, names, source)


def _examples_from_records(spec: TaskSpec, records: Iterable[tuple[int | str, Any]], names: Sequence[str],
                           source: str) -> list[Example]:
    if spec.kind == "qa":
        return _qa_examples_from_records(spec, records, names, source)
    text_columns, label_column = _resolve_columns(spec, names, source)
    counter = _RowCounter(source)
    examples = []
    for line, record in records:
        try:
            if not isinstance(record, dict):
                raise _Malformed("not a record with named columns")
            examples.append(_example_from_record(spec, record, text_columns, label_column,
                                                 f"at line {line} of {source}"))
            counter.good += 1
        except _Malformed as exc:
            counter.skip(line, str(exc))
    counter.finish()
    return examples


# --------------------------------------------------------------------------------------------------
# SQuAD
# --------------------------------------------------------------------------------------------------

def _answers_list(raw: Any) -> list[dict]:
    """SQuAD ``[{"text", "answer_start"}]`` from that form or the ``datasets`` dict-of-lists form."""
    if raw is None:
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise _Malformed(f"answers {raw[:50]!r} are not JSON") from None
    if isinstance(raw, dict):
        texts, starts = raw.get("text", []), raw.get("answer_start", [])
        if len(texts) != len(starts):
            raise _Malformed("answers have different numbers of texts and starts")
        raw = [{"text": t, "answer_start": s} for t, s in zip(texts, starts)]
    if not isinstance(raw, list):
        raise _Malformed(f"answers {raw!r} are not a list")
    answers = []
    for answer in raw:
        if not isinstance(answer, dict) or "text" not in answer:
            raise _Malformed(f"answer {answer!r} has no text")
        try:
            start = int(answer.get("answer_start", -1))
        except (TypeError, ValueError):
            raise _Malformed(f"answer_start {answer.get('answer_start')!r} is not an integer") from None
        answers.append({"text": str(answer["text"]), "answer_start": start})
    return answers


def _aligned(context: str, answer: dict) -> dict:
    """The answer with ``answer_start`` pointing at its text in ``context`` (nearest occurrence).

    An answer whose text is not in the context keeps its text (it still counts when scoring) with
    ``answer_start`` -1; :func:`encode` then takes the next answer for the start/end positions.
    """
    text, start = answer["text"], answer["answer_start"]
    if start >= 0 and context[start:start + len(text)] == text:
        return answer
    occurrences, position = [], context.find(text) if text else -1
    while position != -1:
        occurrences.append(position)
        position = context.find(text, position + 1)
    if not occurrences:
        logger.debug("answer %r is not in its context: kept for scoring only", text[:40])
        return {"text": text, "answer_start": -1}
    return {"text": text, "answer_start": min(occurrences, key=lambda p: abs(p - start))}


def _qa_example(spec: TaskSpec, qid: Any, question: Any, context: Any, answers: Any,
                is_impossible: Any, source: str, where: str) -> Example:
    if not isinstance(question, str) or not isinstance(context, str):
        raise _Malformed("question or context is missing")
    answers = _answers_list(answers)
    if isinstance(is_impossible, str):
        impossible = is_impossible.strip().lower() in ("1", "true", "yes")
    else:
        impossible = bool(is_impossible)
    if impossible and spec.name == "squad":
        raise DataError(f"{source} holds unanswerable questions (e.g. id {qid!r}, {where}): it is "
                        f"SQuAD v2.0 data; use task 'squad_v2'")
    if impossible:
        answers = []  # SQuAD v2 keeps plausible answers elsewhere; gold is no-answer
    else:
        answers = [_aligned(context, a) for a in answers]
    return Example(texts=(question, context), label=None, id=None if qid is None else str(qid),
                   question=question, context=context, answers=answers, is_impossible=impossible)


def _read_squad_json(spec: TaskSpec, file: Path) -> list[Example]:
    source = str(file)
    try:
        with open(file, encoding="utf-8-sig") as handle:
            text = handle.read()
    except OSError as exc:
        raise DataError(f"cannot read {source}: {exc}") from None
    if not text.strip():
        raise DataError(f"{source} is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        # JSON lines of flat records in a .json file
        lines = [(i + 1, _safe_json(l)) for i, l in enumerate(text.splitlines()) if l.strip()]
        names = next((list(r) for _, r in lines if isinstance(r, dict)), [])
        if not names:
            raise DataError(f"{source} is neither SQuAD JSON nor JSON lines") from None
        return _qa_examples_from_records(spec, lines, names, source)
    if isinstance(data, list):
        names = next((list(r) for r in data if isinstance(r, dict)), [])
        return _qa_examples_from_records(spec, [(i + 1, r) for i, r in enumerate(data)], names, source)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{source} is not SQuAD JSON: expected an object with a \"data\" list of articles")
    counter = _RowCounter(source)
    examples: list[Example] = []
    for article_number, article in enumerate(data["data"]):
        paragraphs = article.get("paragraphs", []) if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            counter.skip(f"article {article_number}", "no paragraphs")
            continue
        for paragraph in paragraphs:
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            for qa in (paragraph.get("qas", []) if isinstance(paragraph, dict) else []):
                where = f"article {article_number}"
                try:
                    if not isinstance(qa, dict):
                        raise _Malformed("question is not an object")
                    examples.append(_qa_example(spec, qa.get("id"), qa.get("question"), context,
                                                qa.get("answers"), qa.get("is_impossible", False),
                                                source, where))
                    counter.good += 1
                except _Malformed as exc:
                    counter.skip(f"{where}, question {qa.get('id') if isinstance(qa, dict) else '?'}",
                                 str(exc))
    counter.finish()
    return examples


def _safe_json(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _qa_examples_from_records(spec: TaskSpec, records: Iterable[tuple[int | str, Any]],
                              names: Sequence[str], source: str) -> list[Example]:
    question_column = _match_column(names, ("question", "query"))
    context_column = _match_column(names, ("context", "passage", "paragraph"))
    if question_column is None or context_column is None:
        raise DataError(f"{source} has columns {list(names)}; task {spec.name!r} needs 'question' and "
                        f"'context' columns (and 'answers' for labelled data)")
    id_column = _match_column(names, ("id", "qid", "question_id"))
    answers_column = _match_column(names, ("answers", "answer"))
    impossible_column = _match_column(names, ("is_impossible",))
    counter = _RowCounter(source)
    examples = []
    for line, record in records:
        where = f"line {line}"
        try:
            if not isinstance(record, dict):
                raise _Malformed("not a record with named columns")
            answers = record.get(answers_column) if answers_column else None
            impossible = record.get(impossible_column) if impossible_column else None
            if impossible is None and spec.name == "squad_v2" and answers is not None:
                impossible = not _answers_list(answers)
            examples.append(_qa_example(spec, record.get(id_column, line) if id_column else line,
                                        record.get(question_column), record.get(context_column),
                                        answers, impossible or False, source, where))
            counter.good += 1
        except _Malformed as exc:
            counter.skip(line, str(exc))
    counter.finish()
    return examples


# --------------------------------------------------------------------------------------------------
# `datasets` hub
# --------------------------------------------------------------------------------------------------

def _load_hub(spec: TaskSpec, name: str, split: str) -> list[Example]:
    try:
        import datasets  # noqa: PLC0415  (optional dependency, imported only when asked for)
    except ImportError:
        raise DataError(
            f"{name!r} is neither a file nor a folder; reading it as a `datasets` hub name needs the "
            f"`datasets` package, which is not installed (pip install datasets), and network access"
        ) from None
    hub_split = {"dev": "validation", "dev_matched": "validation_matched",
                 "dev_mismatched": "validation_mismatched", "test_matched": "test_matched"}.get(split, split)
    if spec.name == "mnli" and hub_split in ("validation", "test"):
        hub_split += "_matched"
    is_glue = name.lower() in ("glue", "nyu-mll/glue")
    try:
        if is_glue:
            dataset = datasets.load_dataset(name, spec.name, split=hub_split)
        else:
            dataset = datasets.load_dataset(name, split=hub_split)
    except Exception as exc:  # noqa: BLE001  (network, unknown name, unknown split: all a DataError here)
        raise DataError(f"cannot load {name!r} (split {hub_split!r}) with `datasets`: {exc}") from exc
    names = list(dataset.column_names)
    source = f"`datasets` {name!r} split {hub_split!r}"
    records = ((i, record) for i, record in enumerate(dataset))
    return _examples_from_records(spec, records, names, source)


# --------------------------------------------------------------------------------------------------
# Public: loading
# --------------------------------------------------------------------------------------------------

def load_examples(task: str, path: str | os.PathLike, split: str = "train") -> list[Example]:
    """Read the examples of ``split`` of ``task`` from ``path``.

    Args:
        task: a task name (see :data:`kprune.tasks.TASKS`).
        path: a GLUE task folder (reads ``{split}.tsv``, or the one ``{split}*.tsv``; MNLI ``dev`` reads
            ``dev_matched.tsv``), a ``.tsv`` / ``.csv`` / ``.jsonl`` / ``.json`` file, a SQuAD folder or
            JSON file, or a ``datasets`` hub name (needs ``datasets`` and network).
        split: ``"train"``, ``"dev"`` (``"validation"`` is the same), ``"test"``, … Used only to pick the
            file inside a folder or the hub split.

    Returns:
        The examples in file order. Malformed rows are skipped with one warning per file.

    Raises:
        UnknownTaskError: unknown ``task``.
        DataError: missing path, empty file, missing columns, too many malformed rows, labels out of range.
    """
    spec = get_task(task)
    split = _normalise_split(split)
    location = Path(os.fspath(path)).expanduser()
    if location.is_dir():
        file = _find_split_file(spec, location, split)
    elif location.is_file():
        file = location
    elif _looks_like_hub_name(os.fspath(path)):
        examples = _load_hub(spec, os.fspath(path), split)
        logger.info("loaded %d %s examples from %s", len(examples), spec.name, path)
        return examples
    else:
        raise DataError(f"data path {os.fspath(path)!r} does not exist (expected a task folder, a "
                        f".tsv/.csv/.jsonl/.json file or a `datasets` hub name)")
    if file.stat().st_size == 0:
        raise DataError(f"{file} is empty")
    suffix = file.suffix.lower()
    if spec.kind == "qa":
        if suffix == ".json":
            examples = _read_squad_json(spec, file)
        elif suffix in (".jsonl", ".csv"):
            examples = _read_records(spec, file)
        else:
            raise DataError(f"cannot read {file} for task {spec.name!r}: expected SQuAD .json, .jsonl or .csv")
    elif suffix == ".tsv":
        examples = _read_glue_tsv(spec, file)
    elif suffix in (".csv", ".jsonl", ".json"):
        examples = _read_records(spec, file)
    else:
        raise DataError(f"cannot read {file}: unknown file type {suffix!r}; accepted: "
                        f"{', '.join(_TABLE_SUFFIXES)}")
    logger.info("loaded %d %s examples from %s", len(examples), spec.name, file)
    return examples


# --------------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------------

_ENCODE_CHUNK = 1024


def _check_lengths(max_length: int, doc_stride: int) -> None:
    if not isinstance(max_length, int) or max_length < 8:
        raise ConfigError(f"max_length must be an integer of at least 8 tokens, got {max_length!r}")
    if not isinstance(doc_stride, int) or doc_stride < 1:
        raise ConfigError(f"doc_stride must be a positive integer, got {doc_stride!r}")


def _encode_classification(spec: TaskSpec, examples: Sequence[Example], tokenizer,
                           max_length: int) -> list[dict]:
    features: list[dict] = []
    for begin in range(0, len(examples), _ENCODE_CHUNK):
        chunk = examples[begin:begin + _ENCODE_CHUNK]
        for example in chunk:
            if len(example.texts) != len(spec.text_fields):
                raise DataError(f"an example of task {spec.name!r} has {len(example.texts)} texts, "
                                f"expected {len(spec.text_fields)}")
        first = [e.texts[0] for e in chunk]
        second = [e.texts[1] for e in chunk] if spec.is_pair else None
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


def encode(task: str, examples: Sequence[Example], tokenizer, max_length: int = 128,
           doc_stride: int = 128) -> list[dict]:
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
    outside the context).
    """
    spec = get_task(task)
    _check_lengths(max_length, doc_stride)
    examples = list(examples)
    if not examples:
        return []
    if spec.kind == "qa":
        return _encode_qa(spec, examples, tokenizer, max_length, doc_stride)
    return _encode_classification(spec, examples, tokenizer, max_length)


# --------------------------------------------------------------------------------------------------
# The pruning sample
# --------------------------------------------------------------------------------------------------

def sample_features(task: str, path: str | os.PathLike, tokenizer, num_tokens: int = 100_000, seed: int = 0,
                    max_length: int = 128, split: str = "train", doc_stride: int = 128) -> list[dict]:
    """The pruning sample: features of randomly drawn examples until ``num_tokens`` tokens are reached.

    Examples of ``split`` are visited in the order of ``random.Random(seed).shuffle`` and encoded
    (see :func:`encode`); features are taken until their total length (no padding is counted: features
    are unpadded) reaches ``num_tokens`` or the split is exhausted. The same seed gives the same sample.
    QA features keep ``example_index`` pointing into the loaded split.

    Raises:
        DataError: ``num_tokens <= 0``, or no data.
    """
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens <= 0:
        raise DataError(f"num_tokens must be a positive integer, got {num_tokens!r}")
    spec = get_task(task)
    _check_lengths(max_length, doc_stride)
    examples = load_examples(spec.name, path, split)
    if not examples:
        raise DataError(f"no examples in {os.fspath(path)!r} (split {split!r})")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    # Encode in chunks sized to the budget, so a 100k-token sample of a large split stays cheap.
    chunk_size = 256
    taken: list[dict] = []
    total = 0
    for begin in range(0, len(order), chunk_size):
        chunk = order[begin:begin + chunk_size]
        features = encode(spec.name, [examples[i] for i in chunk], tokenizer, max_length, doc_stride)
        for feature in features:
            if "example_index" in feature:
                feature["example_index"] = chunk[feature["example_index"]]
            taken.append(feature)
            total += int(feature["input_ids"].numel())
            if total >= num_tokens:
                break
        if total >= num_tokens:
            break
    if total < num_tokens:
        logger.info("split %r of %s has only %d tokens (asked for %d): taking all of it",
                    split, os.fspath(path), total, num_tokens)
    logger.info("pruning sample: %d sequences, %d tokens, %.1f tokens on average",
                len(taken), total, total / max(1, len(taken)))
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
