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

Modules: :mod:`.loading` (``load_examples``) with one reader per format (:mod:`.glue`, :mod:`.records`,
:mod:`.squad`, :mod:`.hub`) and their shared :mod:`.example` helpers; :mod:`.encoding` (``encode``);
:mod:`.sampling` (``sample_features``, ``collate``).
"""
from __future__ import annotations

from .encoding import MAX_QUESTION_FRACTION, encode  # noqa: F401  (the constants stay importable here)
from .example import MAX_MALFORMED_FRACTION, Example  # noqa: F401
from .loading import load_examples
from .sampling import collate, sample_features

__all__ = ["Example", "load_examples", "encode", "sample_features", "collate"]
