"""evaluate() end to end on tiny random BERTs, checked against predictions computed independently."""
from __future__ import annotations

import pytest
import torch

from fixtures_data import make_bert_tokenizer, sst2_rows, tiny_bert_config, write_squad, write_tsv
from kprune.data import encode, load_examples
from kprune.errors import DataError
from kprune.evaluation import evaluate, postprocess_qa, predict_logits
from kprune.metrics import squad_scores


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is ~100x faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_bert_tokenizer(tmp_path_factory.mktemp("tok"))


def _classifier(tokenizer, num_labels, seed=0, **overrides):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(len(tokenizer), num_labels=num_labels, **overrides))


def _qa_model(tokenizer, seed=0):
    from transformers import BertForQuestionAnswering

    torch.manual_seed(seed)
    return BertForQuestionAnswering(tiny_bert_config(len(tokenizer), num_labels=2))


def _one_by_one(model, tokenizer, texts):
    """Logits of each example run alone, unpadded, without kprune's batching."""
    outputs = []
    model.eval()
    with torch.no_grad():
        for pair in texts:
            encoded = tokenizer(*pair, truncation=True, max_length=128, return_tensors="pt")
            outputs.append(model(**encoded).logits[0])
    return torch.stack(outputs)


def test_classification_end_to_end(tmp_path, tokenizer):
    write_tsv(tmp_path / "dev.tsv", sst2_rows(24))
    model = _classifier(tokenizer, 2)
    model.train()
    result = evaluate(model, tokenizer, "sst2", tmp_path, batch_size=5)
    assert model.training  # mode restored
    examples = load_examples("sst2", tmp_path, "dev")
    logits = _one_by_one(model, tokenizer, [e.texts for e in examples])
    predictions = logits.argmax(-1)
    labels = torch.tensor([e.label for e in examples])
    assert result["num_examples"] == 24
    assert result["accuracy"] == pytest.approx(float((predictions == labels).float().mean()))
    # batching by length with padding gives the same logits as one-by-one
    features = encode("sst2", examples, tokenizer)
    batched = predict_logits(model, features, batch_size=7, pad_token_id=tokenizer.pad_token_id)
    assert batched.shape == (24, 2)
    torch.testing.assert_close(batched, logits, atol=1e-5, rtol=1e-4)
    assert evaluate(model, tokenizer, "sst2", tmp_path, max_examples=5)["num_examples"] == 5


def test_regression_end_to_end(tmp_path, tokenizer):
    stats = pytest.importorskip("scipy.stats")
    rows = [["sentence1", "sentence2", "score"]]
    sentences = sst2_rows(16)[1:]
    for i in range(15):
        rows.append([sentences[i][0], sentences[i + 1][0], f"{(i * 7) % 11 / 2:.3f}"])
    write_tsv(tmp_path / "dev.tsv", rows)
    model = _classifier(tokenizer, 1)
    result = evaluate(model, tokenizer, "stsb", tmp_path, batch_size=4)
    examples = load_examples("stsb", tmp_path, "dev")
    scores = _one_by_one(model, tokenizer, [e.texts for e in examples])[:, 0].numpy()
    gold = [e.label for e in examples]
    assert result["pearson"] == pytest.approx(stats.pearsonr(scores, gold)[0], abs=1e-3)
    assert result["spearmanr"] == pytest.approx(stats.spearmanr(scores, gold)[0], abs=1e-3)
    assert result["num_examples"] == 15


def test_model_label_order_is_respected(tmp_path, tokenizer):
    write_tsv(tmp_path / "dev.tsv", sst2_rows(20))
    plain = evaluate(_classifier(tokenizer, 2, seed=3), tokenizer, "sst2", tmp_path)
    swapped = _classifier(tokenizer, 2, seed=3, id2label={0: "positive", 1: "negative"},
                          label2id={"positive": 0, "negative": 1})
    # same weights, but class 0 of this model means "positive" (the task's class 1)
    assert evaluate(swapped, tokenizer, "sst2", tmp_path)["accuracy"] == pytest.approx(1 - plain["accuracy"])


def test_head_mismatch_and_unlabelled(tmp_path, tokenizer):
    write_tsv(tmp_path / "dev.tsv", sst2_rows(6))
    with pytest.raises(DataError, match="3 outputs"):
        evaluate(_classifier(tokenizer, 3), tokenizer, "sst2", tmp_path)
    with pytest.raises(DataError, match="start/end"):
        evaluate(_qa_model(tokenizer), tokenizer, "sst2", tmp_path)
    write_tsv(tmp_path / "test.tsv", [["index", "sentence"], ["0", "good"]])
    with pytest.raises(DataError, match="no label"):
        evaluate(_classifier(tokenizer, 2), tokenizer, "sst2", tmp_path, split="test")


def _brute_force_answers(model, examples, features, version_2):
    """Best span per question over all windows by exhaustive search, each window run alone."""
    best, null = {}, {}
    model.eval()
    with torch.no_grad():
        for feature in features:
            inputs = {"input_ids": feature["input_ids"][None],
                      "token_type_ids": feature["token_type_ids"][None]}
            output = model(**inputs)
            starts, ends = output.start_logits[0].tolist(), output.end_logits[0].tolist()
            index = feature["example_index"]
            null[index] = min(null.get(index, float("inf")), starts[0] + ends[0])
            offsets = feature["offset_mapping"]
            for s in range(len(offsets)):
                for e in range(s, min(len(offsets), s + 30)):
                    if offsets[s] is None or offsets[e] is None:
                        continue
                    score = starts[s] + ends[e]
                    if index not in best or score > best[index][0]:
                        best[index] = (score, examples[index].context[offsets[s][0]:offsets[e][1]])
    answers = {}
    for index, example in enumerate(examples):
        score, text = best[index]
        answers[example.id] = "" if version_2 and null[index] > score else text
    return answers


@pytest.mark.parametrize("task", ["squad", "squad_v2"])
def test_qa_end_to_end(task, tmp_path, tokenizer):
    version_2 = task == "squad_v2"
    write_squad(tmp_path / "dev.json", version_2=version_2)
    examples = load_examples(task, tmp_path, "dev")
    # windows of at most 20 context tokens, so the n-best (20) search is exhaustive
    features = encode(task, examples, tokenizer, max_length=28, doc_stride=6)
    assert len(features) > len(examples)
    model = _qa_model(tokenizer, seed=1)
    expected_answers = _brute_force_answers(model, examples, features, version_2)

    start_logits, end_logits = predict_logits(model, features, batch_size=3)
    assert start_logits.shape == end_logits.shape == (len(features), max(len(f["input_ids"]) for f in features))
    assert postprocess_qa(examples, features, start_logits, end_logits, version_2=version_2) == expected_answers

    result = evaluate(model, tokenizer, task, tmp_path, max_length=28, doc_stride=6, batch_size=3)
    expected = squad_scores(expected_answers, examples, version_2=version_2)
    assert result["num_examples"] == len(examples)
    assert result["exact_match"] == pytest.approx(expected["exact_match"])
    assert result["f1"] == pytest.approx(expected["f1"])
    if version_2:
        assert result["NoAns_total"] == 2 and result["HasAns_total"] == 5


def test_postprocess_prefers_null_only_in_v2(tmp_path, tokenizer):
    examples = load_examples("squad_v2", write_squad(tmp_path / "dev.json", version_2=True), "dev")[:1]
    features = encode("squad_v2", examples, tokenizer, max_length=64)
    assert len(features) == 1
    length = len(features[0]["input_ids"])
    starts = torch.full((1, length), -5.0)
    ends = torch.full((1, length), -5.0)
    answer_start, answer_end = features[0]["start_positions"], features[0]["end_positions"]
    starts[0, answer_start], ends[0, answer_end] = 2.0, 2.0
    starts[0, 0], ends[0, 0] = 3.0, 3.0  # null score 6 > best span 4
    assert postprocess_qa(examples, features, starts, ends, version_2=True) == {"q1": ""}
    assert postprocess_qa(examples, features, starts, ends, version_2=False) == {"q1": "denver broncos"}
    assert postprocess_qa(examples, features, starts, ends, version_2=True,
                          null_score_threshold=2.5) == {"q1": "denver broncos"}
