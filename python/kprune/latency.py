"""CPU latency of a model on synthetic token ids (what a deployment sees, without data loading)."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def measure_latency(model: nn.Module, batch_size: int = 32, seq_len: int = 128, repeats: int = 10,
                    warmup: int = 2, seed: int = 0) -> float:
    """Median seconds of one forward pass on a [batch_size, seq_len] batch of random ids."""
    g = torch.Generator().manual_seed(seed)
    vocab = int(getattr(model.config, "vocab_size", 1000))
    device = next(model.parameters()).device
    ids = torch.randint(5, vocab, (batch_size, seq_len), generator=g).to(device)
    mask = torch.ones_like(ids)
    was_training = model.training
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            started = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            if i >= warmup:
                times.append(time.perf_counter() - started)
    model.train(was_training)
    return statistics.median(times)
