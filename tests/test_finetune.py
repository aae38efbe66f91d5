"""examples/finetune.py: training works, is reproducible, is cached, and never leaves half a directory."""
from __future__ import annotations

import json
import random

import pytest
import torch

pytest.importorskip("transformers")
from transformers import BertConfig, BertModel, BertTokenizer  # noqa: E402

import finetune as ft  # noqa: E402  (examples/finetune.py)
from kprune.errors import OutputDirError  # noqa: E402

POSITIVE = ["good", "great", "fine", "nice", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "dull", "boring"]
FILLER = ["the", "a", "movie", "film", "was", "is", "it", "very", "really", "quite", "plot"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

FAST = dict(epochs=4, learning_rate=1e-2, batch_size=8, max_length=16, warmup_ratio=0.1,
            num_threads=1)


def _sentence(rng: random.Random, label: int) -> str:
    words = rng.sample(FILLER, 3) + [rng.choice(POSITIVE if label else NEGATIVE)]
    rng.shuffle(words)
    return " ".join(words)


def _write_sst2(path, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("sentence\tlabel\n")
        for i in range(rows):
            label = i % 2
            f.write(f"{_sentence(rng, label)}\t{label}\n")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random BERT with its tokenizer, and a tiny, learnable SST-2-style task folder."""
    root = tmp_path_factory.mktemp("tiny")
    model_dir = root / "model"
    vocab = {w: i for i, w in enumerate(SPECIAL + POSITIVE + NEGATIVE + FILLER)}
    tokenizer = BertTokenizer(vocab=vocab)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                        pad_token_id=0)
    BertModel(config).save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    data_dir = root / "sst2"
    _write_sst2(data_dir / "train.tsv", 96, seed=0)
    _write_sst2(data_dir / "dev.tsv", 32, seed=1)
    return model_dir, data_dir


def _weights(directory) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(directory / "model.safetensors"))


def test_training_lowers_the_loss_and_saves_everything(tiny, tmp_path):
    model_dir, data_dir = tiny
    out = tmp_path / "out"
    record = ft.finetune(model_dir, "sst2", data_dir, out, **FAST)
    losses = record["train_loss"]
    assert len(losses) == FAST["epochs"]
    assert losses[-1] < 0.8 * losses[0], losses
    assert record["dev_metrics"]["accuracy"] > 0.5
    assert record["num_train_examples"] == 96
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", ft.RECORD_NAME):
        assert (out / name).is_file(), name
    saved = json.loads((out / ft.RECORD_NAME).read_text())
    assert saved["settings"] == record["settings"]
    assert saved["settings"]["learning_rate"] == FAST["learning_rate"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_same_seed_same_weights_other_seed_other_weights(tiny, tmp_path):
    model_dir, data_dir = tiny
    settings = dict(FAST, epochs=1)
    ft.finetune(model_dir, "sst2", data_dir, tmp_path / "a", seed=3, **settings)
    ft.finetune(model_dir, "sst2", data_dir, tmp_path / "b", seed=3, **settings)
    ft.finetune(model_dir, "sst2", data_dir, tmp_path / "c", seed=4, **settings)
    a, b, c = (_weights(tmp_path / n) for n in "abc")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_max_train_examples_takes_a_seeded_subset(tiny, tmp_path):
    model_dir, data_dir = tiny
    record = ft.finetune(model_dir, "sst2", data_dir, tmp_path / "out", max_train_examples=40,
                         **dict(FAST, epochs=1))
    assert record["num_train_examples"] == 40
    assert record["settings"]["max_train_examples"] == 40


def test_cache_is_reused_when_settings_match_and_retrained_when_they_differ(tiny, tmp_path,
                                                                            monkeypatch):
    model_dir, data_dir = tiny
    out = tmp_path / "cached"
    settings = dict(FAST, epochs=1)
    assert ft.ensure_finetuned(model_dir, "sst2", data_dir, out, **settings) == out
    first = json.loads((out / ft.RECORD_NAME).read_text())

    calls = []
    real_finetune = ft.finetune

    def counting_finetune(*args, **kwargs):
        calls.append(kwargs)
        return real_finetune(*args, **kwargs)

    monkeypatch.setattr(ft, "finetune", counting_finetune)
    # Same settings (num_threads does not count): reused, untouched.
    assert ft.ensure_finetuned(model_dir, "sst2", data_dir, out, **dict(settings, num_threads=2)) == out
    assert calls == []
    assert json.loads((out / ft.RECORD_NAME).read_text()) == first

    # Another learning rate: trained again, and the record says so.
    ft.ensure_finetuned(model_dir, "sst2", data_dir, out, **dict(settings, learning_rate=1e-3))
    assert len(calls) == 1
    second = json.loads((out / ft.RECORD_NAME).read_text())
    assert second["settings"]["learning_rate"] == 1e-3
    # And that one is now the cache.
    ft.ensure_finetuned(model_dir, "sst2", data_dir, out, **dict(settings, learning_rate=1e-3))
    assert len(calls) == 1


def test_default_learning_rate_matches_explicit_default(tiny, tmp_path):
    model_dir, data_dir = tiny
    implicit = ft.finetune_settings(model_dir, "sst2", data_dir)
    explicit = ft.finetune_settings(model_dir, "sst2", data_dir,
                                    learning_rate=ft.default_learning_rate("classification"))
    assert implicit == explicit


def test_a_failed_run_leaves_no_output_directory(tiny, tmp_path, monkeypatch):
    import kprune.evaluation

    model_dir, data_dir = tiny

    def broken_evaluate(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(kprune.evaluation, "evaluate", broken_evaluate)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="evaluation failed"):
        ft.finetune(model_dir, "sst2", data_dir, out, **dict(FAST, epochs=1))
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_keeps_the_previous_output(tiny, tmp_path, monkeypatch):
    model_dir, data_dir = tiny
    out = tmp_path / "out"
    ft.finetune(model_dir, "sst2", data_dir, out, **dict(FAST, epochs=1))
    before = (out / ft.RECORD_NAME).read_text()

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ft.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        ft.finetune(model_dir, "sst2", data_dir, out, **dict(FAST, epochs=1, seed=1))
    assert (out / ft.RECORD_NAME).read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_refuses_a_foreign_non_empty_directory(tiny, tmp_path):
    model_dir, data_dir = tiny
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(OutputDirError):
        ft.finetune(model_dir, "sst2", data_dir, out, **dict(FAST, epochs=1))
    assert (out / "precious.txt").read_text() == "keep me"


def test_length_bucketed_batches_cover_every_index_once_and_are_seeded():
    lengths = [random.Random(i).randint(1, 50) for i in range(1000)]

    def epoch(seed):
        return list(ft.length_bucketed_batches(lengths, 16, torch.Generator().manual_seed(seed)))

    batches = epoch(0)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(1 <= len(b) <= 16 for b in batches)
    assert batches == epoch(0)
    assert batches != epoch(1)
    # Bucketing: within a batch lengths are close (spread far below the global 1..50 range).
    spreads = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert sum(spreads) / len(spreads) < 5


def test_regression_task_gets_a_regression_head(tiny, tmp_path):
    model_dir, _ = tiny
    data_dir = tmp_path / "stsb"
    data_dir.mkdir()
    rng = random.Random(0)
    for split, rows in (("train", 48), ("dev", 16)):
        with open(data_dir / f"{split}.tsv", "w") as f:
            f.write("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n")
            for i in range(rows):
                a, b = _sentence(rng, i % 2), _sentence(rng, (i // 2) % 2)
                f.write(f"{i}\tmain\tx\t2012\t{i}\tx\tx\t{a}\t{b}\t{5.0 * (i % 2 == (i // 2) % 2):.3f}\n")
    out = tmp_path / "out"
    record = ft.finetune(model_dir, "stsb", data_dir, out, **dict(FAST, epochs=2, learning_rate=1e-3))
    assert {"pearson", "spearmanr"} <= set(record["dev_metrics"])
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "regression"
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert len(config["id2label"]) == 1


def test_qa_task_trains_a_span_head(tiny, tmp_path):
    model_dir, _ = tiny
    rng = random.Random(0)

    def squad(questions):
        paragraphs = []
        for i in range(questions):
            word = rng.choice(POSITIVE + NEGATIVE)
            context = f"the movie was {word} and the plot was dull"
            paragraphs.append({"context": context, "qas": [{
                "id": f"q{i}", "question": "how was the movie",
                "answers": [{"text": word, "answer_start": context.index(word)}]}]})
        return {"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}

    data_dir = tmp_path / "squad"
    data_dir.mkdir()
    (data_dir / "train-v1.1.json").write_text(json.dumps(squad(48)))
    (data_dir / "dev-v1.1.json").write_text(json.dumps(squad(8)))
    out = tmp_path / "out"
    record = ft.finetune(model_dir, "squad", data_dir, out,
                         **dict(FAST, epochs=3, max_length=32, doc_stride=8))
    assert {"exact_match", "f1"} <= set(record["dev_metrics"])
    assert record["train_loss"][-1] < record["train_loss"][0]
    assert record["settings"]["learning_rate"] == FAST["learning_rate"]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForQuestionAnswering"]
