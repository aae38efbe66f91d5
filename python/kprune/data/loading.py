"""load_examples: find the file of a split and pick the reader for its format."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import DataError
from ..tasks import TaskSpec, get_task
from .example import Example
from .glue import _read_glue_tsv
from .hub import _load_hub
from .records import _read_records
from .squad import _read_squad_json

logger = logging.getLogger(__name__)

_TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json")
_SPLIT_ALIASES = {"validation": "dev", "valid": "dev", "val": "dev", "eval": "dev",
                  "validation_matched": "dev_matched", "validation_mismatched": "dev_mismatched"}


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
