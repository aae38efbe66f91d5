"""Tiny randomly initialised models of every supported family and head (no network)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import transformers

# Fine-tuning and latency tooling live in examples/ (finetune.py, latency.py), outside the library.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

VOCAB = 60
FAMILIES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet", "deberta-v2", "modernbert")
HEADS = ("classification", "regression", "qa")


def tiny_config(family: str, head: str, layers: int = 2):
    labels = {"classification": 3, "regression": 1, "qa": 2}[head]
    common = dict(vocab_size=VOCAB, num_labels=labels, initializer_range=0.2)
    if family == "distilbert":
        return transformers.DistilBertConfig(dim=32, n_layers=layers, n_heads=4, hidden_dim=40,
                                             max_position_embeddings=64, **common)
    bert_like = dict(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=40,
                     max_position_embeddings=72, **common)
    if family == "bert":
        return transformers.BertConfig(**bert_like)
    if family == "roberta":
        return transformers.RobertaConfig(pad_token_id=1, **bert_like)
    if family == "xlm-roberta":
        return transformers.XLMRobertaConfig(pad_token_id=1, hidden_act="gelu_new", **bert_like)
    if family == "electra":
        return transformers.ElectraConfig(embedding_size=16, **bert_like)
    if family == "mpnet":   # transformers' MPNet always uses 32 relative-position buckets
        return transformers.MPNetConfig(pad_token_id=1, relative_attention_num_buckets=32, **bert_like)
    if family == "deberta-v2":   # DeBERTa-v3's layout: relative positions through the layers' own key/query
        return transformers.DebertaV2Config(relative_attention=True, position_buckets=16, norm_rel_ebd="layer_norm",
                                            share_att_key=True, pos_att_type="p2c|c2p", position_biased_input=False,
                                            type_vocab_size=0, **bert_like)
    if family == "modernbert":   # local layers see 3 tokens either side: shorter than most test sequences
        return transformers.ModernBertConfig(
            hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=40,
            max_position_embeddings=72, local_attention=6, global_attn_every_n_layers=2, pad_token_id=0,
            bos_token_id=1, cls_token_id=1, eos_token_id=1, sep_token_id=1, **common)
    raise ValueError(family)


def tiny_model(family: str, head: str, layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    config = tiny_config(family, head, layers)
    if head == "regression":
        config.problem_type = "regression"
    cls = transformers.AutoModelForQuestionAnswering if head == "qa" else transformers.AutoModelForSequenceClassification
    return cls.from_config(config).eval()


def task_of(head: str) -> str:
    return head


def random_samples(count: int = 24, seed: int = 0, min_len: int = 3, max_len: int = 20, types: bool = False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        n = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        sample = {"input_ids": torch.randint(2, VOCAB, (n,), generator=g)}
        if types:
            sample["token_type_ids"] = (torch.arange(n) >= n // 2).long()
        out.append(sample)
    return out


def padded_batch(samples, pad_id: int = 0):
    seq = max(s["input_ids"].numel() for s in samples)
    ids = torch.full((len(samples), seq), pad_id, dtype=torch.long)
    mask = torch.zeros(len(samples), seq, dtype=torch.long)
    for i, s in enumerate(samples):
        n = s["input_ids"].numel()
        ids[i, :n] = s["input_ids"]
        mask[i, :n] = 1
    return ids, mask


def model_outputs(model, ids, mask):
    """Task outputs of an HF model as one tensor, with padded positions of QA logits zeroed."""
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    if hasattr(out, "start_logits"):
        return torch.stack([out.start_logits, out.end_logits], -1) * mask[..., None]
    return out.logits


@pytest.fixture(params=[(f, h) for f in FAMILIES for h in HEADS], ids=lambda p: f"{p[0]}-{p[1]}")
def family_head(request):
    return request.param
