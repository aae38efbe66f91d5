"""GLUE metrics against hand-computed values and scipy/sklearn; SQuAD scoring as the official scripts."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kprune.data import Example
from kprune.errors import DataError
from kprune.metrics import (compute_metrics, matthews_correlation, normalize_answer, pearson, spearmanr,
                            squad_scores)


def test_accuracy_and_f1_by_hand():
    predictions = [1, 1, 0, 0, 1, 0]
    references = [1, 0, 0, 1, 1, 0]
    # tp=2 fp=1 fn=1 -> precision 2/3 recall 2/3 f1 2/3; accuracy 4/6
    result = compute_metrics("mrpc", predictions, references)
    assert result == pytest.approx({"accuracy": 4 / 6, "f1": 2 / 3})
    assert compute_metrics("sst2", predictions, references) == pytest.approx({"accuracy": 4 / 6})
    assert compute_metrics("qqp", [0, 0], [0, 0]) == {"accuracy": 1.0, "f1": 0.0}


def test_logits_are_argmaxed():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    assert compute_metrics("mnli", logits, torch.tensor([1, 0, 1])) == pytest.approx({"accuracy": 2 / 3})


def test_matthews_by_hand():
    predictions = [1, 1, 0, 0, 1, 0, 1, 1]
    references = [1, 0, 0, 1, 1, 0, 1, 1]
    tp, tn, fp, fn = 4, 2, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert compute_metrics("cola", predictions, references) == pytest.approx(
        {"matthews_correlation": expected})
    assert matthews_correlation([1, 1, 1], [1, 0, 1]) == 0.0  # constant predictions: undefined -> 0


def test_correlations_by_hand():
    predictions = [1.0, 2.0, 3.0, 4.0]
    references = [2.0, 4.0, 6.0, 8.5]
    x, y = np.array(predictions), np.array(references)
    expected = float(((x - x.mean()) * (y - y.mean())).sum()
                     / math.sqrt(((x - x.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum()))
    result = compute_metrics("stsb", predictions, references)
    assert result["pearson"] == pytest.approx(expected)
    assert result["spearmanr"] == pytest.approx(1.0)
    # ties take average ranks: ranks [1.5, 1.5, 3] vs [1, 2, 3]
    assert spearmanr([1.0, 1.0, 2.0], [1.0, 2.0, 3.0]) == pytest.approx(math.sqrt(3) / 2)
    assert compute_metrics("stsb", torch.tensor([[1.0], [2.0], [3.0]]), [3.0, 2.0, 1.0])["pearson"] == \
        pytest.approx(-1.0)
    assert pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == 0.0


def test_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, size=300).astype(float)  # many ties
    y = x + rng.normal(size=300)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert spearmanr(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


def test_against_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    references = rng.integers(0, 2, size=200)
    predictions = np.where(rng.random(200) < 0.7, references, 1 - references)
    result = compute_metrics("mrpc", predictions, references)
    assert result["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(references, predictions))
    assert result["f1"] == pytest.approx(sklearn_metrics.f1_score(references, predictions))
    assert matthews_correlation(predictions, references) == pytest.approx(
        sklearn_metrics.matthews_corrcoef(references, predictions))
    three = rng.integers(0, 3, size=200)
    noisy = np.where(rng.random(200) < 0.6, three, rng.integers(0, 3, size=200))
    assert matthews_correlation(noisy, three) == pytest.approx(sklearn_metrics.matthews_corrcoef(three, noisy))


def test_bad_inputs():
    with pytest.raises(DataError, match="2 predictions but 3 references"):
        compute_metrics("sst2", [1, 0], [1, 0, 1])
    with pytest.raises(DataError):
        compute_metrics("sst2", [], [])
    with pytest.raises(DataError, match="map example id"):
        compute_metrics("squad", ["a"], [])


# ----------------------------------------------------------------------------------------------- SQuAD

@pytest.mark.parametrize("raw, normalised", [
    ("The Denver Broncos", "denver broncos"),
    ("  an   apple, a pear!  ", "apple pear"),
    ("THE", ""),
    ("theatre", "theatre"),           # 'the' only as a whole word
    ("Saint-Bernadette's", "saintbernadettes"),
    ("a\tb\nc", "b c"),
    ("1,000 (approx.)", "1000 approx"),
])
def test_normalize_answer(raw, normalised):
    assert normalize_answer(raw) == normalised


def _qa(qid, answers, impossible=False):
    return Example(texts=("q", "c"), id=qid, question="q", context="c",
                   answers=[{"text": a, "answer_start": 0} for a in answers], is_impossible=impossible)


def test_squad_v1_scores_by_hand():
    examples = [_qa("1", ["Denver Broncos", "Broncos"]), _qa("2", ["the big red dog"]), _qa("3", ["Paris"])]
    predictions = {"1": "broncos.", "2": "red dog house", "3": "London"}
    # q1: exact (max over golds); q2: common {red, dog}: p=2/3 r=2/3 -> f1 2/3; q3: 0
    result = squad_scores(predictions, examples, version_2=False)
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    assert result["total"] == 3
    missing = squad_scores({"1": "Broncos"}, examples, version_2=False)
    assert missing["exact_match"] == pytest.approx(100 / 3)
    assert compute_metrics("squad", predictions, examples)["f1"] == pytest.approx(result["f1"])


def test_squad_v2_no_answer_and_breakdown():
    examples = [_qa("1", ["Broncos"]), _qa("2", ["dog"]), _qa("3", [], impossible=True),
                _qa("4", [], impossible=True)]
    predictions = {"1": "Broncos", "2": "", "3": "", "4": "something"}
    result = squad_scores(predictions, examples, version_2=True)
    # exact: 1, 0, 1, 0; f1 likewise (empty vs non-empty is 0)
    assert result["exact_match"] == pytest.approx(50.0)
    assert result["f1"] == pytest.approx(50.0)
    assert result["HasAns_total"] == 2 and result["NoAns_total"] == 2
    assert result["HasAns_exact"] == pytest.approx(50.0) and result["NoAns_exact"] == pytest.approx(50.0)
    assert result["HasAns_f1"] == pytest.approx(50.0) and result["NoAns_f1"] == pytest.approx(50.0)
    # v2: a gold answer that normalises to nothing counts as no-answer
    assert squad_scores({"x": ""}, [_qa("x", ["the"])], version_2=True)["exact_match"] == 100.0


def test_squad_v1_needs_gold():
    with pytest.raises(DataError, match="no gold answers"):
        squad_scores({"1": "a"}, [_qa("1", [])], version_2=False)
    with pytest.raises(DataError):
        squad_scores({}, [], version_2=False)
