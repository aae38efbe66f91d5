"""Task metrics with GLUE and SQuAD conventions, with no dependency beyond numpy.

Scales: GLUE metrics are fractions (accuracy and F1 in 0..1; Matthews, Pearson and Spearman
correlations in -1..1), as the GLUE tooling and ``evaluate`` report them. SQuAD exact match and F1 are
percentages (0..100), as the official evaluation scripts report them.
"""
from __future__ import annotations

import collections
import logging
import re
import string
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import DataError
from .tasks import get_task

__all__ = ["compute_metrics", "squad_scores", "accuracy", "binary_f1", "matthews_correlation",
           "pearson", "spearmanr", "normalize_answer"]

logger = logging.getLogger(__name__)


def _as_array(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().float().numpy() if values.is_floating_point() \
            else values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype == object:
        raise DataError(f"{name} must be numbers, got {values!r:.80}")
    return array


def accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Share of predictions equal to the reference (0..1)."""
    p, r = np.asarray(predictions), np.asarray(references)
    return float((p == r).mean())


def binary_f1(predictions: Sequence[int], references: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class (0..1); 0 when there are no true positives (as scikit-learn)."""
    p, r = np.asarray(predictions) == positive, np.asarray(references) == positive
    true_positive = float(np.sum(p & r))
    if true_positive == 0:
        return 0.0
    precision = true_positive / float(np.sum(p))
    recall = true_positive / float(np.sum(r))
    return 2 * precision * recall / (precision + recall)


def matthews_correlation(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Matthews correlation coefficient (-1..1), multi-class form of scikit-learn; 0 when undefined."""
    p, r = np.asarray(predictions).astype(np.int64), np.asarray(references).astype(np.int64)
    classes = np.union1d(p, r)
    p_index, r_index = np.searchsorted(classes, p), np.searchsorted(classes, r)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(confusion, (r_index, p_index), 1.0)
    true_per_class, predicted_per_class = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, samples = np.trace(confusion), confusion.sum()
    covariance_pt = correct * samples - np.dot(predicted_per_class, true_per_class)
    covariance_pp = samples ** 2 - np.dot(predicted_per_class, predicted_per_class)
    covariance_tt = samples ** 2 - np.dot(true_per_class, true_per_class)
    denominator = covariance_pp * covariance_tt
    if denominator == 0:
        return 0.0
    return float(covariance_pt / np.sqrt(denominator))


def pearson(predictions: Sequence[float], references: Sequence[float]) -> float:
    """Pearson correlation (-1..1); 0 when either side is constant (the correlation is undefined)."""
    x, y = np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.dot(x, x) * np.dot(y, y))
    if denominator == 0:
        logger.warning("correlation undefined (constant predictions or references): reporting 0")
        return 0.0
    return float(np.clip(np.dot(x, y) / denominator, -1.0, 1.0))


def _rank(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy.stats.rankdata 'average')."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(values)]))
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


def spearmanr(predictions: Sequence[float], references: Sequence[float]) -> float:
    """Spearman rank correlation (-1..1): Pearson correlation of average ranks."""
    x, y = np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64)
    return pearson(_rank(x), _rank(y))


def compute_metrics(task: str, predictions: Any, references: Any) -> dict[str, float]:
    """The metrics of ``task`` (see ``TaskSpec.metrics``) for predictions against references.

    Classification: ``predictions`` are class ids, or logits of shape (N, num_labels) (argmax is taken);
    reports ``accuracy`` (0..1), plus ``f1`` of class 1 (0..1) for MRPC and QQP, or only
    ``matthews_correlation`` (-1..1) for CoLA. Regression (STS-B): predicted scores (N or (N, 1))
    against gold scores; reports ``pearson`` and ``spearmanr`` (-1..1).
    QA (squad, squad_v2): ``predictions`` maps example id to answer text and ``references`` are the
    :class:`kprune.data.Example` objects; delegates to :func:`squad_scores` (0..100).

    Raises:
        DataError: lengths differ, no predictions, or predictions of the wrong shape.
    """
    spec = get_task(task)
    if spec.kind == "qa":
        if not isinstance(predictions, Mapping):
            raise DataError(f"QA predictions must map example id to answer text, got "
                            f"{type(predictions).__name__}")
        return squad_scores(dict(predictions), references, version_2=spec.name == "squad_v2")
    p, r = _as_array(predictions, "predictions"), _as_array(references, "references")
    if spec.kind == "classification" and p.ndim == 2:
        p = p.argmax(axis=-1)
    if spec.kind == "regression" and p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim != 1 or r.ndim != 1:
        raise DataError(f"task {spec.name!r} needs 1-D predictions and references, got shapes "
                        f"{p.shape} and {r.shape}")
    if len(p) != len(r):
        raise DataError(f"{len(p)} predictions but {len(r)} references")
    if len(p) == 0:
        raise DataError("no predictions to score")
    if spec.kind == "regression":
        return {"pearson": pearson(p, r), "spearmanr": spearmanr(p, r)}
    p, r = p.astype(np.int64), r.astype(np.int64)
    results: dict[str, float] = {}
    for metric in spec.metrics:
        if metric == "accuracy":
            results["accuracy"] = accuracy(p, r)
        elif metric == "f1":
            results["f1"] = binary_f1(p, r)
        elif metric == "matthews_correlation":
            results["matthews_correlation"] = matthews_correlation(p, r)
    return results


# --------------------------------------------------------------------------------------------------
# SQuAD (the official v1.1 / v2.0 evaluation scripts' definitions)
# --------------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace (official SQuAD)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _exact(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _f1(prediction: str, gold: str, version_2: bool) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if version_2 and (not prediction_tokens or not gold_tokens):
        # v2 script: no-answer matches only no-answer; the v1 script gives 0 (no common tokens)
        return float(prediction_tokens == gold_tokens)
    common = collections.Counter(prediction_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _gold_answers(example: Any, version_2: bool) -> list[str]:
    answers = [a["text"] for a in (example.answers or [])]
    if getattr(example, "is_impossible", False):
        return [""]
    if version_2:
        answers = [a for a in answers if normalize_answer(a)]
        return answers or [""]
    return answers


def squad_scores(predictions: dict[str, str], examples: Iterable[Any], version_2: bool) -> dict:
    """Exact match and F1 of SQuAD predictions, as the official scripts compute them (0..100).

    Each score is the maximum over the example's gold answers, after :func:`normalize_answer`.
    ``version_2``: the empty string is the no-answer prediction; an unanswerable question's only gold
    answer is the empty string, matched only by an empty prediction. The v2 result also holds the
    ``HasAns_exact``/``HasAns_f1``/``HasAns_total`` and ``NoAns_*`` breakdown. A question without a
    prediction scores 0 (one warning counts them). ``total`` is the number of questions scored.

    Raises:
        DataError: no examples, or (v1) an example without gold answers.
    """
    examples = list(examples)
    if not examples:
        raise DataError("no examples to score")
    exact_scores: dict[str, float] = {}
    f1_scores: dict[str, float] = {}
    has_answer: dict[str, bool] = {}
    missing = 0
    for example in examples:
        qid = str(example.id)
        gold = _gold_answers(example, version_2)
        if not gold:
            raise DataError(f"question {qid!r} has no gold answers: cannot score it (test data?)")
        has_answer[qid] = bool(normalize_answer(gold[0])) or not version_2
        if qid not in predictions:
            missing += 1
            exact_scores[qid] = f1_scores[qid] = 0.0
            continue
        prediction = predictions[qid] or ""
        exact_scores[qid] = max(_exact(prediction, g) for g in gold)
        f1_scores[qid] = max(_f1(prediction, g, version_2) for g in gold)
    if missing:
        logger.warning("%d of %d questions have no prediction: scored 0", missing, len(examples))
    total = len(exact_scores)
    results: dict[str, float] = {
        "exact_match": 100.0 * sum(exact_scores.values()) / total,
        "f1": 100.0 * sum(f1_scores.values()) / total,
        "total": total,
    }
    if version_2:
        for prefix, wanted in (("HasAns", True), ("NoAns", False)):
            ids = [q for q, has in has_answer.items() if has == wanted]
            results[f"{prefix}_total"] = len(ids)
            if ids:
                results[f"{prefix}_exact"] = 100.0 * sum(exact_scores[q] for q in ids) / len(ids)
                results[f"{prefix}_f1"] = 100.0 * sum(f1_scores[q] for q in ids) / len(ids)
    return results
