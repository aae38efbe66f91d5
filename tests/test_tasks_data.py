"""Tasks table, data loaders (GLUE TSV, CSV/JSONL, SQuAD), encoding, the pruning sampler, collate."""
from __future__ import annotations

import json
import logging
import sys
import types

import pytest
import torch

from fixtures_data import (CONTEXT_1, make_bert_tokenizer, make_roberta_tokenizer, squad_json, sst2_rows,
                           write_squad, write_text, write_tsv)
from kprune.data import Example, collate, encode, load_examples, sample_features
from kprune.errors import ConfigError, DataError, UnknownTaskError
from kprune.tasks import TASKS, TaskSpec, get_task


@pytest.fixture(scope="module")
def bert_tokenizer(tmp_path_factory):
    return make_bert_tokenizer(tmp_path_factory.mktemp("bert-tok"))


@pytest.fixture(scope="module")
def roberta_tokenizer(tmp_path_factory):
    return make_roberta_tokenizer(tmp_path_factory.mktemp("roberta-tok"))


# ---------------------------------------------------------------------------------------------- tasks

def test_task_table_is_consistent():
    assert set(TASKS) == {"sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "cola", "squad", "squad_v2"}
    for name, spec in TASKS.items():
        assert isinstance(spec, TaskSpec) and spec.name == name
        assert spec.kind in ("classification", "regression", "qa")
        assert spec.main_metric in spec.metrics
        assert 1 <= len(spec.text_fields) <= 2
        if spec.kind == "classification":
            assert spec.num_labels in (2, 3) and len(spec.label_names) == spec.num_labels
        elif spec.kind == "regression":
            assert spec.num_labels == 1
        else:
            assert spec.num_labels == 2 and spec.label_field is None
    assert get_task("stsb").metrics == ("pearson", "spearmanr")
    assert get_task("cola").main_metric == "matthews_correlation"
    assert get_task("mrpc").metrics == ("accuracy", "f1")
    assert get_task("squad_v2").metrics == ("exact_match", "f1")


def test_get_task_aliases_and_unknown():
    assert get_task("SST-2") is TASKS["sst2"]
    assert get_task(" STS-B ") is TASKS["stsb"]
    with pytest.raises(UnknownTaskError) as info:
        get_task("imdb")
    assert "'imdb'" in str(info.value) and "sst2" in str(info.value) and "squad_v2" in str(info.value)


# ------------------------------------------------------------------------------------- GLUE formats

GLUE_CASES = {
    # task: (file name, rows, expected texts of the first example, expected labels)
    "sst2": ("train.tsv", [["sentence", "label"], ["a good film ", "1"], ["so \"bad\" it's bad ", "0"]],
             ("a good film ",), [1, 0]),
    "mrpc": ("train.tsv", [["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                           ["1", "11", "12", "He said \"yes\".", "He agreed."],
                           ["0", "13", "14", "A cat.", "A dog."]],
             ("He said \"yes\".", "He agreed."), [1, 0]),
    "stsb": ("train.tsv", [["index", "genre", "filename", "year", "old_index", "source1", "source2",
                            "sentence1", "sentence2", "score"],
                           ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none",
                            "A plane is taking off.", "An air plane is taking off.", "5.000"],
                           ["1", "main-captions", "MSRvid", "2012test", "0004", "none", "none",
                            "A man plays.", "A man is playing a flute.", "3.800"]],
             ("A plane is taking off.", "An air plane is taking off."), [5.0, 3.8]),
    "qqp": ("train.tsv", [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                          ["1", "2", "3", "How old?", "What age?", "1"], ["4", "5", "6", "Why?", "How?", "0"]],
            ("How old?", "What age?"), [1, 0]),
    "mnli": ("dev_matched.tsv", [["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                                  "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
                                  "sentence2", "label1", "label2", "label3", "label4", "label5", "gold_label"],
                                 ["0", "1", "1e", "gov", "( a )", "( b )", "(ROOT a)", "(ROOT b)", "The cat sat.",
                                  "A cat sat.", "entailment", "entailment", "neutral", "entailment",
                                  "entailment", "entailment"],
                                 ["1", "2", "2c", "gov", "( a )", "( b )", "(ROOT a)", "(ROOT b)", "It rained.",
                                  "It was dry.", "contradiction", "contradiction", "contradiction",
                                  "contradiction", "contradiction", "contradiction"],
                                 ["2", "3", "3n", "gov", "( a )", "( b )", "(ROOT a)", "(ROOT b)", "He ran.",
                                  "He was late.", "neutral", "neutral", "neutral", "neutral", "neutral",
                                  "neutral"]],
             ("The cat sat.", "A cat sat."), [0, 2, 1]),
    "qnli": ("train.tsv", [["index", "question", "sentence", "label"],
                           ["0", "What sat?", "The cat sat.", "entailment"],
                           ["1", "Who ran?", "It rained.", "not_entailment"]],
             ("What sat?", "The cat sat."), [0, 1]),
    "rte": ("train.tsv", [["index", "sentence1", "sentence2", "label"],
                          ["0", "The cat sat.", "A cat sat.", "entailment"],
                          ["1", "It rained.", "It was dry.", "not_entailment"]],
            ("The cat sat.", "A cat sat."), [0, 1]),
    "cola": ("train.tsv", [["gj04", "1", "", "Our friends won't buy this analysis."],
                           ["gj04", "0", "*", "One more pseudo generalization and I'm giving up."]],
             ("Our friends won't buy this analysis.",), [1, 0]),
}


@pytest.mark.parametrize("task", sorted(GLUE_CASES))
def test_glue_formats(task, tmp_path):
    name, rows, first_texts, labels = GLUE_CASES[task]
    write_tsv(tmp_path / task / name, rows)
    split = "dev" if name.startswith("dev") else "train"
    examples = load_examples(task, tmp_path / task, split)
    assert [e.label for e in examples] == pytest.approx(labels)
    assert examples[0].texts == first_texts
    if task == "stsb":
        assert all(isinstance(e.label, float) for e in examples)
    else:
        assert all(isinstance(e.label, int) for e in examples)
    # the same file passed directly
    assert [e.texts for e in load_examples(task, tmp_path / task / name)] == [e.texts for e in examples]


def test_glue_test_file_without_labels(tmp_path):
    write_tsv(tmp_path / "test.tsv", [["index", "sentence"], ["0", "a good film"], ["1", "bad"]])
    examples = load_examples("sst2", tmp_path, "test")
    assert [e.label for e in examples] == [None, None]
    assert examples[1].texts == ("bad",)
    write_tsv(tmp_path / "cola" / "test.tsv", [["index", "sentence"], ["0", "Bill left."]])
    assert load_examples("cola", tmp_path / "cola", "test")[0].texts == ("Bill left.",)


def test_byte_order_mark_is_dropped(tmp_path):
    write_tsv(tmp_path / "train.tsv", [["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                                       ["1", "1", "2", "a", "b"]], bom=True)
    assert load_examples("mrpc", tmp_path)[0].label == 1
    write_tsv(tmp_path / "cola.tsv", [["gj04", "1", "", "Bill left."]], bom=True)
    assert load_examples("cola", tmp_path / "cola.tsv")[0].texts == ("Bill left.",)


def test_split_names_and_folder_lookup(tmp_path):
    write_tsv(tmp_path / "dev.tsv", sst2_rows(3))
    assert len(load_examples("sst2", tmp_path, "validation")) == 3
    qqp = tmp_path / "qqp"
    write_tsv(qqp / "train_subset.tsv", [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                                         ["1", "2", "3", "a?", "b?", "0"]])
    assert len(load_examples("qqp", qqp, "train")) == 1
    with pytest.raises(DataError, match="no file for split 'test'"):
        load_examples("qqp", qqp, "test")


def test_malformed_rows_are_counted_and_skipped(tmp_path, caplog):
    rows = sst2_rows(20)
    rows[3] = ["a row with a stray tab", "x", "1"]  # 3 fields
    rows[7] = ["a row with a bad label", "positive-ish"]
    path = write_tsv(tmp_path / "train.tsv", rows)
    with caplog.at_level(logging.WARNING, logger="kprune.data"):
        examples = load_examples("sst2", path)
    assert len(examples) == 18
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "skipped 2 malformed rows" in message and str(path) in message and "line 4" in message


def test_qqp_style_short_first_row(tmp_path, caplog):
    rows = [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            ["1", "2", "3", "How is life? Could you say?", "Which level? 0"]]  # 5 fields, as in real QQP
    rows += [[str(i), "1", "2", "why?", "how?", str(i % 2)] for i in range(20)]
    with caplog.at_level(logging.WARNING, logger="kprune.data"):
        examples = load_examples("qqp", write_tsv(tmp_path / "train.tsv", rows))
    assert len(examples) == 20
    assert "skipped 1 malformed rows" in caplog.text and "line 2" in caplog.text


def test_too_many_malformed_rows(tmp_path):
    rows = sst2_rows(10)
    for i in (1, 2):
        rows[i] = ["only one field"]
    with pytest.raises(DataError, match="2 of 10 rows .* malformed"):
        load_examples("sst2", write_tsv(tmp_path / "a.tsv", rows))
    all_bad = [["sentence", "label"]] + [["x", "y", "z"]] * 5
    with pytest.raises(DataError, match="5 of 5 rows"):
        load_examples("sst2", write_tsv(tmp_path / "b.tsv", all_bad))


def test_labels_that_do_not_fit(tmp_path):
    rows = sst2_rows(10) + [["a film", "5"]]
    with pytest.raises(DataError, match="'5'") as info:
        load_examples("sst2", write_tsv(tmp_path / "a.tsv", rows))
    assert "2 classes" in str(info.value)
    stsb = [["sentence1", "sentence2", "score"]] + [["a", "b", "abc"]] * 3
    with pytest.raises(DataError, match="'abc'"):
        load_examples("stsb", write_tsv(tmp_path / "b.tsv", stsb))
    mnli = [["sentence1", "sentence2", "gold_label"], ["a", "b", "3"]]
    with pytest.raises(DataError, match="'3'"):
        load_examples("mnli", write_tsv(tmp_path / "c.tsv", mnli))


def test_empty_and_missing(tmp_path):
    with pytest.raises(DataError, match="empty"):
        load_examples("sst2", write_text(tmp_path / "empty.tsv", ""))
    with pytest.raises(DataError, match="no examples"):
        load_examples("sst2", write_tsv(tmp_path / "header.tsv", [["sentence", "label"]]))
    with pytest.raises(DataError, match="does not exist"):
        load_examples("sst2", tmp_path / "nowhere" / "train.tsv")
    with pytest.raises(DataError, match="needs text 2 in a column named one of"):
        load_examples("rte", write_tsv(tmp_path / "rte.tsv", [["index", "sentence1", "label"], ["0", "a", "0"]]))
    with pytest.raises(UnknownTaskError):
        load_examples("imdb", tmp_path / "empty.tsv")


def test_csv_and_jsonl_columns(tmp_path):
    csv_path = write_text(tmp_path / "sst.csv", 'text,label\n"a good, fun film",1\nbad,0\n')
    examples = load_examples("sst2", csv_path)
    assert [(e.texts, e.label) for e in examples] == [(("a good, fun film",), 1), (("bad",), 0)]

    records = [{"premise": "The cat sat.", "hypothesis": "A cat sat.", "label": "entailment", "idx": 0},
               {"premise": "It rained.", "hypothesis": "It was dry.", "label": 2, "idx": 1}]
    jsonl = write_text(tmp_path / "mnli.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    examples = load_examples("mnli", jsonl)
    assert [(e.texts, e.label) for e in examples] == [(("The cat sat.", "A cat sat."), 0),
                                                      (("It rained.", "It was dry."), 2)]

    qnli = write_text(tmp_path / "qnli.json", json.dumps(
        [{"question": "What sat?", "sentence": "The cat sat.", "label": 0}]))
    assert load_examples("qnli", qnli)[0].texts == ("What sat?", "The cat sat.")

    stsb = write_text(tmp_path / "stsb.jsonl", json.dumps({"sentence1": "a", "sentence2": "b", "score": 2.5}))
    assert load_examples("stsb", stsb)[0].label == 2.5

    unlabelled = write_text(tmp_path / "u.jsonl", json.dumps({"sentence": "x", "label": -1}) + "\n")
    assert load_examples("sst2", unlabelled)[0].label is None
    unscored = write_text(tmp_path / "s.jsonl", json.dumps({"sentence1": "a", "sentence2": "b", "label": -1.0}))
    assert load_examples("stsb", unscored)[0].label is None

    rows = "sentence,label\n" + "".join(f"film {i},{i % 2}\n" for i in range(12)) + "too,many,fields\n"
    assert len(load_examples("sst2", write_text(tmp_path / "m.csv", rows))) == 12
    lines = "".join(json.dumps({"sentence": f"s{i}", "label": 1}) + "\n" for i in range(12)) + "{broken\n"
    assert len(load_examples("sst2", write_text(tmp_path / "m.jsonl", lines))) == 12

    with pytest.raises(DataError, match="columns"):
        load_examples("sst2", write_text(tmp_path / "bad.csv", "review,stars\ngood,5\n"))


def test_hub_name_without_datasets(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(DataError, match="`datasets` package, which is not installed"):
        load_examples("sst2", "glue")


def test_hub_name_with_fake_datasets(monkeypatch):
    calls = []

    class FakeDataset(list):
        column_names = ["premise", "hypothesis", "label", "idx"]

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return FakeDataset([{"premise": "p", "hypothesis": "h", "label": 1, "idx": 0},
                            {"premise": "q", "hypothesis": "g", "label": -1, "idx": 1}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    examples = load_examples("mnli", "nyu-mll/glue", "dev")
    assert calls == [("nyu-mll/glue", "mnli", "validation_matched")]
    assert [(e.texts, e.label) for e in examples] == [(("p", "h"), 1), (("q", "g"), None)]


# ---------------------------------------------------------------------------------------------- SQuAD

def test_squad_loading(tmp_path):
    examples = load_examples("squad", write_squad(tmp_path / "dev-v1.1.json"), "dev")
    assert len(examples) == 5 and examples[0].id == "q1"
    assert examples[0].texts == (examples[0].question, examples[0].context)
    assert examples[0].answers[0] == {"text": "denver broncos", "answer_start": 0}
    assert not any(e.is_impossible for e in examples)
    assert [e.id for e in load_examples("squad", tmp_path, "dev")] == [e.id for e in examples]

    v2 = load_examples("squad_v2", write_squad(tmp_path / "v2" / "dev-v2.0.json", version_2=True), "dev")
    assert [e.id for e in v2 if e.is_impossible] == ["q6", "q7"]
    assert all(e.answers == [] for e in v2 if e.is_impossible)
    with pytest.raises(DataError, match="squad_v2"):
        load_examples("squad", tmp_path / "v2" / "dev-v2.0.json")


def test_squad_jsonl_hub_style_answers(tmp_path):
    record = {"id": "a", "title": "t", "context": "the cat sat on the mat", "question": "where ?",
              "answers": {"text": ["on the mat"], "answer_start": [12]}}
    examples = load_examples("squad", write_text(tmp_path / "x.jsonl", json.dumps(record) + "\n"))
    assert examples[0].answers == [{"text": "on the mat", "answer_start": 12}]
    record_v2 = dict(record, id="b", answers={"text": [], "answer_start": []})
    v2 = load_examples("squad_v2", write_text(tmp_path / "y.jsonl", json.dumps(record_v2) + "\n"))
    assert v2[0].is_impossible


def test_squad_misaligned_answer_start_is_repaired(tmp_path):
    data = squad_json()
    data["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] += 1  # off by one
    examples = load_examples("squad", write_text(tmp_path / "s.json", json.dumps(data)))
    answer = examples[1].answers[0]
    assert CONTEXT_1[answer["answer_start"]:answer["answer_start"] + len(answer["text"])] == "paris"
    # an answer text absent from the context is kept for scoring, not used for positions
    data["data"][0]["paragraphs"][0]["qas"][0]["answers"].insert(0, {"text": "not there", "answer_start": 3})
    examples = load_examples("squad", write_text(tmp_path / "t.json", json.dumps(data)))
    assert examples[0].answers[0] == {"text": "not there", "answer_start": -1}
    feature = encode("squad", examples[:1], make_bert_tokenizer(tmp_path / "tok"), max_length=64)[0]
    offsets = feature["offset_mapping"]
    span = CONTEXT_1[offsets[feature["start_positions"]][0]:offsets[feature["end_positions"]][1]]
    assert span == "denver broncos"


def _check_answer_positions(examples, features):
    found = set()
    for feature in features:
        example = examples[feature["example_index"]]
        start, end = feature["start_positions"], feature["end_positions"]
        offsets = feature["offset_mapping"]
        assert len(offsets) == len(feature["input_ids"])
        assert offsets[0] is None  # CLS is not context
        if start == 0:
            assert end == 0
            continue
        assert start <= end
        text = example.context[offsets[start][0]:offsets[end][1]]
        assert text == example.answers[0]["text"]
        found.add(feature["example_index"])
    return found


@pytest.mark.parametrize("which", ["bert", "roberta"])
def test_squad_windows_map_back_to_answers(which, tmp_path, bert_tokenizer, roberta_tokenizer):
    tokenizer = bert_tokenizer if which == "bert" else roberta_tokenizer
    examples = load_examples("squad_v2", write_squad(tmp_path / "dev.json", version_2=True))
    # one window per example
    features = encode("squad_v2", examples, tokenizer, max_length=128 if which == "bert" else 256)
    assert [f["example_index"] for f in features] == list(range(len(examples)))
    assert _check_answer_positions(examples, features) == {i for i, e in enumerate(examples)
                                                           if not e.is_impossible}
    assert ("token_type_ids" in features[0]) == (which == "bert")
    for feature in features:
        assert feature["input_ids"].dtype == torch.long and feature["input_ids"].dim() == 1
        if examples[feature["example_index"]].is_impossible:
            assert feature["start_positions"] == feature["end_positions"] == 0
    # several windows per example: every answer still found in some window
    small = encode("squad_v2", examples, tokenizer, max_length=24 if which == "bert" else 40, doc_stride=4)
    assert len(small) > len(examples)
    assert all(len(f["input_ids"]) <= (24 if which == "bert" else 40) for f in small)
    assert _check_answer_positions(examples, small) == {i for i, e in enumerate(examples)
                                                        if not e.is_impossible}


def test_squad_window_stride(tmp_path, bert_tokenizer):
    examples = load_examples("squad", write_squad(tmp_path / "dev.json"))[:1]
    context_offsets = bert_tokenizer(examples[0].context, add_special_tokens=False,
                                     return_offsets_mapping=True)["offset_mapping"]
    for doc_stride in (3, 5):
        features = encode("squad", examples, bert_tokenizer, max_length=20, doc_stride=doc_stride)
        assert len(features) > 2
        firsts = [next(o for o in f["offset_mapping"] if o is not None) for f in features]
        # window k starts k * doc_stride context tokens into the document
        assert firsts == [tuple(context_offsets[k * doc_stride]) for k in range(len(features))]
        lasts = [[o for o in f["offset_mapping"] if o is not None][-1] for f in features]
        assert tuple(lasts[-1]) == tuple(context_offsets[-1])  # the whole context is covered


def test_squad_unlabelled_and_slow_tokenizer(tmp_path, bert_tokenizer):
    data = squad_json()
    for qa in data["data"][0]["paragraphs"][0]["qas"]:
        del qa["answers"]
    examples = load_examples("squad", write_text(tmp_path / "test.json", json.dumps(data)))
    features = encode("squad", examples, bert_tokenizer, max_length=64)
    unlabelled = [f for f in features if examples[f["example_index"]].answers == []]
    assert unlabelled and all("start_positions" not in f for f in unlabelled)

    class Slow:
        is_fast = False

    with pytest.raises(ConfigError, match="fast tokenizer"):
        encode("squad", examples, Slow())
    with pytest.raises(ConfigError, match="doc_stride"):
        encode("squad", examples, bert_tokenizer, doc_stride=0)


# ------------------------------------------------------------------------------------ encode/collate

def test_encode_classification(tmp_path, bert_tokenizer):
    examples = [Example(texts=("the film was good", "a dull plot"), label=1),
                Example(texts=("bad", "good"), label=0)]
    features = encode("mrpc", examples, bert_tokenizer, max_length=8)
    assert len(features) == 2 and features[0]["labels"] == 1 and isinstance(features[0]["labels"], int)
    assert len(features[0]["input_ids"]) == 8  # truncated
    assert features[1]["token_type_ids"].tolist().count(1) == 2  # "good" + [SEP]
    regression = encode("stsb", [Example(texts=("a", "b"), label=3)], bert_tokenizer)
    assert isinstance(regression[0]["labels"], float)
    unlabelled = encode("sst2", [Example(texts=("a",))], bert_tokenizer)
    assert "labels" not in unlabelled[0]


def test_collate_pads_and_stacks(bert_tokenizer):
    features = [{"input_ids": torch.tensor([2, 5, 3]), "token_type_ids": torch.tensor([0, 0, 0]), "labels": 1},
                {"input_ids": torch.tensor([2, 3]), "token_type_ids": torch.tensor([0, 0]), "labels": 0}]
    batch = collate(features, pad_token_id=9)
    assert batch["input_ids"].tolist() == [[2, 5, 3], [2, 3, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0]
    floats = collate([{"input_ids": torch.tensor([1]), "labels": 2.5}])
    assert floats["labels"].dtype == torch.float32 and "token_type_ids" not in floats
    qa = collate([{"input_ids": torch.tensor([1, 2]), "start_positions": 1, "end_positions": 1,
                   "example_index": 0, "offset_mapping": [None, (0, 1)]}])
    assert set(qa) == {"input_ids", "attention_mask", "start_positions", "end_positions"}
    with pytest.raises(DataError, match="all labelled or all unlabelled"):
        collate([features[0], {"input_ids": torch.tensor([1])}])
    with pytest.raises(DataError):
        collate([])


# ----------------------------------------------------------------------------------------- sampler

def test_sampler_budget_and_seeds(tmp_path, bert_tokenizer):
    folder = tmp_path / "sst2"
    write_tsv(folder / "train.tsv", sst2_rows(200))
    total_available = sum(len(f["input_ids"]) for f in
                          encode("sst2", load_examples("sst2", folder), bert_tokenizer))
    sample = sample_features("sst2", folder, bert_tokenizer, num_tokens=300, seed=0)
    lengths = [len(f["input_ids"]) for f in sample]
    assert sum(lengths) >= 300 and sum(lengths) - lengths[-1] < 300
    again = sample_features("sst2", folder, bert_tokenizer, num_tokens=300, seed=0)
    assert [f["input_ids"].tolist() for f in again] == [f["input_ids"].tolist() for f in sample]
    other = sample_features("sst2", folder, bert_tokenizer, num_tokens=300, seed=1)
    assert [(f["input_ids"].tolist(), f["labels"]) for f in other] != \
        [(f["input_ids"].tolist(), f["labels"]) for f in sample]
    everything = sample_features("sst2", folder, bert_tokenizer, num_tokens=10 ** 9)
    assert len(everything) == 200 and sum(len(f["input_ids"]) for f in everything) == total_available
    with pytest.raises(DataError, match="num_tokens"):
        sample_features("sst2", folder, bert_tokenizer, num_tokens=0)
    with pytest.raises(DataError):
        sample_features("sst2", write_text(tmp_path / "empty.tsv", ""), bert_tokenizer)


def test_sampler_qa_keeps_example_index(tmp_path, bert_tokenizer):
    path = write_squad(tmp_path / "train.json")
    examples = load_examples("squad", path)
    sample = sample_features("squad", path, bert_tokenizer, num_tokens=10 ** 6, seed=3, max_length=32,
                             doc_stride=8)
    assert {f["example_index"] for f in sample} == set(range(len(examples)))
    assert _check_answer_positions(examples, sample)


def test_squad_defaults_to_the_papers_384_token_windows_with_stride_128(tmp_path, bert_tokenizer):
    from kprune.data import Example
    from kprune.tasks import get_task
    context = " ".join([CONTEXT_1] * 30)
    question = "who won the super bowl ?"
    example = Example(texts=(question, context), id="q", question=question, context=context, answers=[])
    features = encode("squad", [example], bert_tokenizer)
    context_offsets = bert_tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert len(context_offsets) > 2 * 384 and len(features) > 3
    assert max(f["input_ids"].numel() for f in features) == 384
    firsts = [next(o for o in f["offset_mapping"] if o is not None) for f in features]
    assert firsts == [tuple(context_offsets[k * 128]) for k in range(len(features))]
    explicit = encode("squad", [example], bert_tokenizer, max_length=384, doc_stride=128)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(features, explicit))
    assert get_task("sst2").lengths() == (128, 128) and get_task("squad_v2").lengths() == (384, 128)
    assert get_task("squad").lengths(256, None) == (256, 128)
