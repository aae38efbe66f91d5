"""GLUE TSV files: tab-separated, no quoting, columns found by name (CoLA train/dev have no header)."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

from ..errors import DataError
from ..tasks import TaskSpec
from .example import Example, _example_from_record, _Malformed, _resolve_columns, _RowCounter

logger = logging.getLogger(__name__)

_COLA_COLUMNS = ("source", "label", "original_label", "sentence")


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
