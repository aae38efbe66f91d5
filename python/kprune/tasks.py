"""The tasks kprune knows: GLUE sequence classification/regression and SQuAD extractive QA.

A :class:`TaskSpec` says what a task's data looks like (its text columns and label column as named in
the GLUE TSV files), what the model's head must produce (``kind``, ``num_labels``) and how it is scored
(``metrics``, ``main_metric``). Loaders in :mod:`kprune.data` also accept the column names of the
Hugging Face ``datasets`` GLUE/SQuAD releases and a few common aliases; those are listed per task in
``text_aliases`` and ``label_aliases``.

Label order of the string-labelled tasks (MNLI, QNLI, RTE) follows the ``datasets`` GLUE release
(``label_names``), so that TSV files and hub data give the same integer labels.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import ConfigError, UnknownTaskError

__all__ = ["TaskSpec", "TASKS", "get_task", "custom_task", "with_columns"]

KINDS = ("classification", "regression", "qa")


@dataclass(frozen=True)
class TaskSpec:
    """What kprune needs to know about one task.

    Attributes:
        name: short task name (``"sst2"``, ``"squad_v2"``, …).
        kind: ``"classification"``, ``"regression"`` or ``"qa"``.
        num_labels: classes for classification, 1 for regression, 2 (start/end) for QA.
        text_fields: GLUE TSV column names of the one or two texts (QA: question, context).
        label_field: GLUE TSV column name of the label (``None`` for QA).
        metrics: the metric names :func:`kprune.metrics.compute_metrics` reports for this task.
        main_metric: the one number a results table shows (as in the K-prune paper's tables).
        label_names: names of the classes in label-id order, for files with string labels.
        text_aliases: per text, other accepted column names (CSV/JSONL/``datasets``), first match wins.
        label_aliases: other accepted names of the label column.
        max_length: tokens per feature by default (QA: per window); the paper's 128 for GLUE, 384 for SQuAD.
        doc_stride: QA only, context tokens between the starts of consecutive windows (the paper's 128).
        pair_optional: the second text is read only when the data has a column for it (the generic
            tasks of :func:`custom_task`); the first text alone otherwise.
    """

    name: str
    kind: str
    num_labels: int
    text_fields: tuple[str, ...]
    label_field: str | None
    metrics: tuple[str, ...]
    main_metric: str
    label_names: tuple[str, ...] | None = None
    text_aliases: tuple[tuple[str, ...], ...] = ()
    label_aliases: tuple[str, ...] = ()
    max_length: int = 128
    doc_stride: int = 128

    def lengths(self, max_length: int | None = None, doc_stride: int | None = None) -> tuple[int, int]:
        """The given lengths, or this task's defaults where None."""
        return (self.max_length if max_length is None else max_length,
                self.doc_stride if doc_stride is None else doc_stride)
    pair_optional: bool = False

    @property
    def is_pair(self) -> bool:
        """True when an example has two texts (sentence pair or question/context)."""
        return len(self.text_fields) == 2


_LABEL_ALIASES = ("label", "labels", "gold_label")

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="sst2", kind="classification", num_labels=2,
            text_fields=("sentence",), label_field="label",
            metrics=("accuracy",), main_metric="accuracy",
            label_names=("negative", "positive"),
            text_aliases=(("sentence", "text", "text_a", "sentence1"),),
            label_aliases=_LABEL_ALIASES,
        ),
        TaskSpec(
            name="mrpc", kind="classification", num_labels=2,
            text_fields=("#1 String", "#2 String"), label_field="Quality",
            metrics=("accuracy", "f1"), main_metric="accuracy",
            label_names=("not_equivalent", "equivalent"),
            text_aliases=(("#1 String", "sentence1", "text_a", "text"),
                          ("#2 String", "sentence2", "text_b", "text_pair")),
            label_aliases=("Quality",) + _LABEL_ALIASES,
        ),
        TaskSpec(
            name="stsb", kind="regression", num_labels=1,
            text_fields=("sentence1", "sentence2"), label_field="score",
            metrics=("pearson", "spearmanr"), main_metric="spearmanr",
            text_aliases=(("sentence1", "text_a", "text"), ("sentence2", "text_b", "text_pair")),
            label_aliases=("score", "label", "labels", "similarity_score"),
        ),
        TaskSpec(
            name="qqp", kind="classification", num_labels=2,
            text_fields=("question1", "question2"), label_field="is_duplicate",
            metrics=("accuracy", "f1"), main_metric="accuracy",
            label_names=("not_duplicate", "duplicate"),
            text_aliases=(("question1", "sentence1", "text_a", "text"),
                          ("question2", "sentence2", "text_b", "text_pair")),
            label_aliases=("is_duplicate",) + _LABEL_ALIASES,
        ),
        TaskSpec(
            name="mnli", kind="classification", num_labels=3,
            text_fields=("sentence1", "sentence2"), label_field="gold_label",
            metrics=("accuracy",), main_metric="accuracy",
            label_names=("entailment", "neutral", "contradiction"),
            text_aliases=(("sentence1", "premise", "text_a", "text"),
                          ("sentence2", "hypothesis", "text_b", "text_pair")),
            label_aliases=("gold_label", "label", "labels"),
        ),
        TaskSpec(
            name="qnli", kind="classification", num_labels=2,
            text_fields=("question", "sentence"), label_field="label",
            metrics=("accuracy",), main_metric="accuracy",
            label_names=("entailment", "not_entailment"),
            text_aliases=(("question", "sentence1", "text_a", "text"),
                          ("sentence", "sentence2", "text_b", "text_pair")),
            label_aliases=_LABEL_ALIASES,
        ),
        TaskSpec(
            name="rte", kind="classification", num_labels=2,
            text_fields=("sentence1", "sentence2"), label_field="label",
            metrics=("accuracy",), main_metric="accuracy",
            label_names=("entailment", "not_entailment"),
            text_aliases=(("sentence1", "premise", "text_a", "text"),
                          ("sentence2", "hypothesis", "text_b", "text_pair")),
            label_aliases=_LABEL_ALIASES,
        ),
        TaskSpec(
            name="cola", kind="classification", num_labels=2,
            text_fields=("sentence",), label_field="label",
            metrics=("matthews_correlation",), main_metric="matthews_correlation",
            label_names=("unacceptable", "acceptable"),
            text_aliases=(("sentence", "text", "text_a", "sentence1"),),
            label_aliases=_LABEL_ALIASES,
        ),
        TaskSpec(
            name="squad", kind="qa", num_labels=2,
            text_fields=("question", "context"), label_field=None,
            metrics=("exact_match", "f1"), main_metric="f1", max_length=384,
        ),
        TaskSpec(
            name="squad_v2", kind="qa", num_labels=2,
            text_fields=("question", "context"), label_field=None,
            metrics=("exact_match", "f1"), main_metric="f1", max_length=384,
        ),
    )
}

# Spellings users type for the same task.
_ALIASES = {
    "sst-2": "sst2", "sst": "sst2", "sts-b": "stsb", "sts": "stsb", "mnli-m": "mnli",
    "mnli_matched": "mnli", "squad1": "squad", "squad_v1": "squad", "squad1.1": "squad",
    "squad-v1.1": "squad", "squad2": "squad_v2", "squad-v2": "squad_v2", "squadv2": "squad_v2",
    "squad2.0": "squad_v2",
}


def get_task(name: str) -> TaskSpec:
    """Return the :class:`TaskSpec` of ``name`` (case-insensitive; ``"SST-2"`` and ``"sst2"`` are the same).

    Raises:
        UnknownTaskError: ``name`` is not a task kprune knows; the message lists the supported tasks.
    """
    if isinstance(name, TaskSpec):
        return name
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    try:
        return TASKS[key]
    except KeyError:
        raise UnknownTaskError(
            f"unknown task {name!r}; supported tasks: {', '.join(TASKS)}"
        ) from None


#: Column names a generic task reads its texts and label from (first match, case-insensitive).
GENERIC_TEXT_COLUMNS = ("text", "sentence", "sentence1", "text_a", "question", "premise")
GENERIC_PAIR_COLUMNS = ("text_pair", "sentence2", "text_b", "hypothesis")
GENERIC_LABEL_COLUMNS = ("label", "labels", "score", "gold_label")


def custom_task(kind: str, num_labels: int = 2, label_names=None) -> TaskSpec:
    """A generic task for your own data and head: ``kind`` ``"classification"`` with ``num_labels``
    classes (labels are ids ``0..num_labels-1``, or the ``label_names`` in id order) or ``"regression"``
    (one score). Texts come from a column named one of :data:`GENERIC_TEXT_COLUMNS`, a second text from
    one of :data:`GENERIC_PAIR_COLUMNS` when the data has it; change them with :func:`with_columns`.

    Raises:
        ConfigError: an unknown kind, ``num_labels`` < 2 for classification, or label names that do not
            match ``num_labels``.
    """
    if kind == "regression":
        return TaskSpec(name="regression", kind="regression", num_labels=1, text_fields=("text", "text_pair"),
                        label_field="label", metrics=("pearson", "spearmanr"), main_metric="spearmanr",
                        text_aliases=(GENERIC_TEXT_COLUMNS, GENERIC_PAIR_COLUMNS),
                        label_aliases=GENERIC_LABEL_COLUMNS, pair_optional=True)
    if kind != "classification":
        raise ConfigError(f"kind={kind!r} is not a generic task; accepted: classification, regression")
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
        raise ConfigError(f"num_labels={num_labels!r} must be an integer >= 2 for classification")
    names = None
    if label_names is not None:
        names = tuple(str(n).strip().lower() for n in label_names)
        if len(names) != num_labels or len(set(names)) != num_labels:
            raise ConfigError(f"label_names={list(label_names)!r} must be {num_labels} distinct names")
    metrics = ("accuracy", "f1") if num_labels == 2 else ("accuracy",)
    return TaskSpec(name="classification", kind="classification", num_labels=num_labels,
                    text_fields=("text", "text_pair"), label_field="label", metrics=metrics,
                    main_metric="accuracy", label_names=names,
                    text_aliases=(GENERIC_TEXT_COLUMNS, GENERIC_PAIR_COLUMNS),
                    label_aliases=GENERIC_LABEL_COLUMNS, pair_optional=True)


def with_columns(spec: TaskSpec, text_column: str | None = None, text_pair_column: str | None = None,
                 label_column: str | None = None) -> TaskSpec:
    """``spec`` reading its first text, second text and label from the named CSV/JSONL/TSV columns
    (None: keep the task's own names). A second text column makes a generic task a pair task.

    Raises:
        ConfigError: columns for a QA task, or a second text for a single-text task.
    """
    if text_column is None and text_pair_column is None and label_column is None:
        return spec
    if spec.kind == "qa":
        raise ConfigError(f"task {spec.name!r} reads SQuAD fields (question, context, answers); "
                          "text_column, text_pair_column and label_column do not apply")
    aliases = list(spec.text_aliases or tuple((f,) for f in spec.text_fields))
    changes: dict = {}
    if text_column is not None:
        aliases[0] = (text_column,)
    if text_pair_column is not None:
        if not spec.is_pair:
            raise ConfigError(f"task {spec.name!r} has one text; text_pair_column={text_pair_column!r} "
                              "does not apply")
        aliases[1] = (text_pair_column,)
        changes["pair_optional"] = False
    if label_column is not None:
        changes.update(label_field=label_column, label_aliases=(label_column,))
    return replace(spec, text_aliases=tuple(aliases), **changes)
