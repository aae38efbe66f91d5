"""CSV (with a header), JSONL and JSON files of records with named columns."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import DataError
from ..tasks import TaskSpec
from .example import Example, _example_from_record, _Malformed, _resolve_columns, _RowCounter
from .squad import _qa_examples_from_records


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
