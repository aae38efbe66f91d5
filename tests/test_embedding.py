"""Sentence-embedding models (task='embedding'): sentences from any source, the pruned folder's
round trip (kprune, transformers' remote code, sentence-transformers), the CLI, and the STS score
against an independent computation."""
import json

import numpy as np
import pytest
import scipy.stats
import torch
import transformers

import kprune
from conftest import random_samples, tiny_config
from fixtures_data import make_bert_tokenizer, write_text, write_tsv
from kprune.cli import main
from kprune.data.sentences import load_sentences, sample_sentences
from kprune.embedding import embed_sentences

WORDS = "the a cat dog sat on mat ran fast slow good bad movie film was is very quite really".split()


def sts_rows(n, seed=0):
    rng = np.random.default_rng(seed)
    rows = [["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
             "score"]]
    for i in range(n):
        a = " ".join(rng.choice(WORDS, rng.integers(3, 9)))
        b = " ".join(rng.choice(WORDS, rng.integers(3, 9)))
        rows.append([str(i), "main", "f", "2012", str(i), "none", "none", a, b, f"{rng.uniform(0, 5):.2f}"])
    return rows


def bare_bert(vocab, seed=0):
    config = tiny_config("bert", "classification", layers=2)
    config.vocab_size = vocab
    torch.manual_seed(seed)
    return transformers.BertModel(config).eval()


def reference_embeddings(model, tokenizer, sentences):
    """Written out, one sentence at a time (no padding): mean of the last hidden states, unit length."""
    out = []
    with torch.no_grad():
        for s in sentences:
            ids = torch.tensor([tokenizer(s, truncation=True, max_length=128)["input_ids"]])
            mean = model(input_ids=ids).last_hidden_state[0].mean(0)
            out.append(mean / mean.norm())
    return torch.stack(out)


@pytest.fixture
def workspace(tmp_path):
    tokenizer = make_bert_tokenizer(tmp_path / "tok")
    model = bare_bert(len(tokenizer))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    write_text(tmp_path / "model" / "1_Pooling" / "config.json", json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}))
    write_text(tmp_path / "model" / "sentence_bert_config.json", '{"max_seq_length": 77, "do_lower_case": false}')
    write_tsv(tmp_path / "STS-B" / "train.tsv", sts_rows(40, seed=1))
    write_tsv(tmp_path / "STS-B" / "dev.tsv", sts_rows(30, seed=2))
    return tmp_path


def test_sentences_come_from_every_text_column_of_any_source(tmp_path):
    write_text(tmp_path / "pairs.csv", "sentence1,sentence2,label\nthe cat sat,a dog ran,entailment\n"
                                       "the cat sat,good movie,neutral\n")
    assert load_sentences(tmp_path / "pairs.csv") == ["the cat sat", "a dog ran", "good movie"]
    write_text(tmp_path / "single.jsonl", '{"text": "very good film"}\n{"text": "bad movie", "label": 7}\n')
    assert load_sentences(tmp_path / "single.jsonl") == ["very good film", "bad movie"]
    write_tsv(tmp_path / "STS-B" / "train.tsv", sts_rows(5))
    rows = sts_rows(5)[1:]
    assert load_sentences(tmp_path / "STS-B") == list(dict.fromkeys(t for r in rows for t in (r[7], r[8])))
    tokenizer = make_bert_tokenizer(tmp_path / "tok")
    sample = sample_sentences(tmp_path / "STS-B", tokenizer, num_tokens=30, seed=3)
    assert sum(f["input_ids"].numel() for f in sample) >= 30
    again = sample_sentences(tmp_path / "STS-B", tokenizer, num_tokens=30, seed=3)
    assert [f["input_ids"].tolist() for f in sample] == [f["input_ids"].tolist() for f in again]
    write_text(tmp_path / "empty.csv", "id,value\n1,2\n")
    with pytest.raises(kprune.DataError, match="no sentences"):
        load_sentences(tmp_path / "empty.csv")


def test_embedding_task_and_head_must_fit():
    classifier = transformers.BertForSequenceClassification(tiny_config("bert", "classification")).eval()
    with pytest.raises(kprune.ConfigError, match="bare encoder"):
        kprune.prune(classifier, random_samples(4), "embedding")
    with pytest.raises(kprune.ConfigError, match="task head"):
        kprune.prune(bare_bert(60), random_samples(4), "classification")


def test_pruned_embedding_model_round_trips(tmp_path):
    model = bare_bert(60, seed=3)
    config = kprune.KPruneConfig(progress=False, batch_size=6)
    pruned = kprune.prune(model, random_samples(18, seed=4), "embedding", 0.5, config).model
    out = kprune.save_pruned(pruned, tmp_path / "out")
    saved = json.loads((out / "config.json").read_text())
    assert saved["auto_map"] == {"AutoModel": "modeling_kprune.KPruneBertModel"}
    assert json.loads((out / "1_Pooling/config.json").read_text())["pooling_mode_mean_tokens"] is True
    assert [m["type"].rsplit(".", 1)[1] for m in json.loads((out / "modules.json").read_text())] == \
        ["Transformer", "Pooling", "Normalize"]
    ids = torch.randint(2, 60, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        want = pruned(input_ids=ids, attention_mask=mask).last_hidden_state
        for loaded in (kprune.load_pruned(out), transformers.AutoModel.from_pretrained(
                out, trust_remote_code=True, local_files_only=True).eval()):
            assert torch.equal(loaded(input_ids=ids, attention_mask=mask).last_hidden_state, want)


def test_cli_prunes_and_scores_an_embedding_model(workspace, capsys):
    out = workspace / "pruned"
    code = main(["prune", "--model", str(workspace / "model"), "--task", "embedding", "--data",
                 str(workspace / "STS-B"), "--flops-reduction", "0.5", "--output", str(out), "--num-tokens", "300",
                 "--quiet"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["flops_reduction"] > 0.3
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 77   # carried over
    assert json.loads((out / "report.json").read_text())["task"] == "embedding"
    assert main(["info", "--model", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["class"] == "BertModel" and info["flops_reduction"] > 0.3
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    rows = sts_rows(30, seed=2)[1:]
    for folder in (workspace / "model", out):
        assert main(["evaluate", "--model", str(folder), "--task", "stsb", "--data", str(workspace / "STS-B"),
                     "--embedding"]) == 0
        got = json.loads(capsys.readouterr().out)
        model = kprune.load_pruned(folder)
        first = reference_embeddings(model, tokenizer, [r[7] for r in rows])
        second = reference_embeddings(model, tokenizer, [r[8] for r in rows])
        want = scipy.stats.spearmanr((first * second).sum(-1).numpy(), [float(r[9]) for r in rows]).statistic
        assert got["num_examples"] == 30 and got["spearman"] == pytest.approx(want, abs=1e-6)


def test_cli_refuses_a_model_that_does_not_pool_by_the_mean(workspace, capsys):
    write_text(workspace / "model" / "1_Pooling" / "config.json", json.dumps(
        {"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}))
    code = main(["prune", "--model", str(workspace / "model"), "--task", "embedding", "--data",
                 str(workspace / "STS-B"), "--output", str(workspace / "o"), "--quiet"])
    assert code == 2 and "pooling_mode_cls_token" in capsys.readouterr().err
    assert not (workspace / "o").exists()


def test_pruned_folder_loads_in_sentence_transformers(workspace, capsys):
    st = pytest.importorskip("sentence_transformers")
    out = workspace / "pruned"
    assert main(["prune", "--model", str(workspace / "model"), "--task", "embedding", "--data",
                 str(workspace / "STS-B"), "--output", str(out), "--num-tokens", "300", "--quiet"]) == 0
    capsys.readouterr()
    sentences = ["the cat sat on the mat", "a very good film", "dog"]
    loaded = st.SentenceTransformer(str(out), trust_remote_code=True, device="cpu", local_files_only=True)
    got = torch.as_tensor(loaded.encode(sentences, convert_to_numpy=True))
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    want = embed_sentences(kprune.load_pruned(out), tokenizer, sentences)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert type(loaded[0].auto_model).__name__ == "KPruneBertModel"


def test_cli_prunes_the_encoder_of_a_folder_that_names_another_architecture(workspace, capsys):
    """all-mpnet-base-v2's folder says MPNetForMaskedLM: --task embedding prunes its encoder."""
    config = json.loads((workspace / "model" / "config.json").read_text())
    (workspace / "model" / "config.json").write_text(json.dumps(dict(config, architectures=["BertForMaskedLM"])))
    out = workspace / "pruned"
    assert main(["prune", "--model", str(workspace / "model"), "--task", "embedding", "--data",
                 str(workspace / "STS-B"), "--output", str(out), "--num-tokens", "200", "--quiet"]) == 0
    capsys.readouterr()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    assert type(kprune.load_pruned(out)) is transformers.BertModel
