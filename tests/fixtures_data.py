"""Helpers for the data/metrics/evaluation tests: tiny tokenizers and task files built in tmp_path.

Nothing here reads ../shared or downloads anything.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

WORDS = (
    "the a an is was of and to in it film movie good bad great awful fun dull plot actors story "
    "what who where when why how did does do many city river cat dog sat on mat paris france capital "
    "won game team year super bowl denver broncos man woman plays guitar playing music yes no not "
    "very quite really this that one two three four five question answer"
).split()

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def vocab_tokens() -> list[str]:
    """Specials, whole words, and single characters (plain and ``##``) so any text tokenizes."""
    characters = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = SPECIALS + sorted(set(WORDS)) + characters + ["##" + c for c in characters]
    seen, unique = set(), []
    for token in tokens:
        if token not in seen:
            seen.add(token)
            unique.append(token)
    return unique


def make_bert_tokenizer(directory: Path, **kwargs):
    """A BertTokenizerFast over a small WordPiece vocabulary written to ``directory/vocab.txt``."""
    from transformers import BertTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokens = vocab_tokens()
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True, **kwargs)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) \
        + list(range(ord("\xae"), ord("\xff") + 1))
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, characters)))


def make_roberta_tokenizer(directory: Path):
    """A RobertaTokenizerFast (byte-level BPE, no token_type_ids) with one token per byte, no merges."""
    from transformers import RobertaTokenizerFast

    tokens = ["<s>", "<pad>", "</s>", "<unk>"] + list(_bytes_to_unicode().values()) + ["<mask>"]
    return RobertaTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


def write_text(path: Path, text: str, bom: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def write_tsv(path: Path, rows: list[list[str]], bom: bool = False) -> Path:
    return write_text(path, "".join("\t".join(map(str, row)) + "\n" for row in rows), bom=bom)


SENTENCES = [
    "the film was good", "a dull plot", "great actors and a fun story", "the movie is awful",
    "it was very good", "not good", "this one is really bad", "quite fun", "what a great film",
    "the story was dull", "good good good", "bad actors", "a really fun movie", "awful and dull",
    "the plot is great", "no fun at all",
]


def sst2_rows(n: int = 16) -> list[list[str]]:
    """Header plus n rows of ``sentence<TAB>label``."""
    rows = [["sentence", "label"]]
    for i in range(n):
        rows.append([SENTENCES[i % len(SENTENCES)] + " ", str(i % 2)])
    return rows


CONTEXT_1 = ("denver broncos won the super bowl in the year two thousand and sixteen . "
             "the team plays in denver . paris is the capital of france .")
CONTEXT_2 = "a man plays guitar . a woman is playing music . the cat sat on the mat ."


def squad_json(version_2: bool = False) -> dict:
    """A small SQuAD-format dataset: two paragraphs, five questions (two unanswerable in v2)."""
    def answer(context, text, occurrence=0):
        start = -1
        for _ in range(occurrence + 1):
            start = context.index(text, start + 1)
        return {"text": text, "answer_start": start}

    qas_1 = [
        {"id": "q1", "question": "who won the super bowl ?",
         "answers": [answer(CONTEXT_1, "denver broncos"), answer(CONTEXT_1, "broncos")]},
        {"id": "q2", "question": "what is the capital of france ?",
         "answers": [answer(CONTEXT_1, "paris")]},
        {"id": "q3", "question": "where does the team play ?",
         "answers": [answer(CONTEXT_1, "denver", 1)]},
    ]
    qas_2 = [
        {"id": "q4", "question": "what does the man play ?", "answers": [answer(CONTEXT_2, "guitar")]},
        {"id": "q5", "question": "where did the cat sit ?", "answers": [answer(CONTEXT_2, "on the mat")]},
    ]
    if version_2:
        for qa in qas_1 + qas_2:
            qa["is_impossible"] = False
        qas_1.append({"id": "q6", "question": "who won the world cup ?", "answers": [],
                      "plausible_answers": [answer(CONTEXT_1, "denver broncos")], "is_impossible": True})
        qas_2.append({"id": "q7", "question": "what does the dog play ?", "answers": [],
                      "is_impossible": True})
    return {"version": "v2.0" if version_2 else "1.1",
            "data": [{"title": "t", "paragraphs": [{"context": CONTEXT_1, "qas": qas_1},
                                                   {"context": CONTEXT_2, "qas": qas_2}]}]}


def write_squad(path: Path, version_2: bool = False) -> Path:
    return write_text(path, json.dumps(squad_json(version_2)))


def tiny_bert_config(vocab_size: int, num_labels: int = 2, **overrides):
    from transformers import BertConfig

    settings = dict(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=128, num_labels=num_labels)
    settings.update(overrides)
    return BertConfig(**settings)


def cli_prune_evaluate_info(tmp_path: Path, capsys, model_dir: Path, info_args: tuple[str, ...] = ()) -> dict:
    """`kprune prune` (SST-2, 50%), `evaluate` and `info --json` on a saved model with its tokenizer beside it,
    checking the budget and the evaluated count; returns the info JSON of the pruned folder."""
    from kprune.cli import main

    data = tmp_path / "SST-2"
    write_tsv(data / "train.tsv", sst2_rows(40))
    write_tsv(data / "dev.tsv", sst2_rows(12))
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(model_dir), "--task", "sst2", "--data", str(data),
                 "--flops-reduction", "0.5", "--output", str(out), "--num-tokens", "300", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["flops_reduction"] >= 0.5 - 1e-9
    assert main(["evaluate", "--model", str(out), "--task", "sst2", "--data", str(data)]) == 0
    assert json.loads(capsys.readouterr().out)["num_examples"] == 12
    assert main(["info", "--model", str(out), "--json", *info_args]) == 0
    return json.loads(capsys.readouterr().out)
