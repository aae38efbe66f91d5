"""Randomly initialised BERT classifiers and synthetic token samples for the scaling benchmarks
(timing and memory do not depend on the weights' values, so nothing is fine-tuned)."""
from __future__ import annotations

import resource


def random_bert(hidden: int, layers: int, heads: int, ffn: int, vocab: int, seed: int = 0):
    """A BertForSequenceClassification (2 labels, eval mode) with seeded random weights."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=ffn, num_labels=2)
    return transformers.BertForSequenceClassification(config).eval()


def random_samples(num_tokens: int, min_len: int, max_len: int, vocab: int, first_id: int = 5,
                   seed: int = 0) -> list[dict]:
    """Samples of random ids in [first_id, vocab) with lengths drawn from [min_len, max_len), until
    they hold at least ``num_tokens`` tokens."""
    import torch

    g = torch.Generator().manual_seed(seed)
    samples, total = [], 0
    while total < num_tokens:
        n = int(torch.randint(min_len, max_len, (1,), generator=g))
        samples.append({"input_ids": torch.randint(first_id, vocab, (n,), generator=g)})
        total += n
    return samples


def rss_mb() -> float:
    """This process's peak resident set size so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def weights_mb(model) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
