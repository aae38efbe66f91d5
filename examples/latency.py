"""CPU latency of models on synthetic token ids (what a deployment sees, without data loading)."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def _inputs(model: nn.Module, batch_size: int, seq_len: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    vocab = int(getattr(model.config, "vocab_size", 1000))
    device = next(model.parameters()).device
    ids = torch.randint(min(5, vocab - 1), vocab, (batch_size, seq_len), generator=g).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def compare_latency(models: dict[str, nn.Module], batch_size: int = 32, seq_len: int = 128, repeats: int = 10,
                    warmup: int = 1, seed: int = 0) -> dict[str, float]:
    """Median seconds of one forward pass of each model on the same [batch_size, seq_len] random ids.

    The models run in turn within each repeat, so that load from other processes hits them alike and
    their ratio stays meaningful on a busy machine.
    """
    if batch_size < 1 or seq_len < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"batch_size, seq_len and repeats must be >= 1 and warmup >= 0; got {batch_size}, "
                         f"{seq_len}, {repeats}, {warmup}")
    inputs = _inputs(next(iter(models.values())), batch_size, seq_len, seed)
    modes = {name: model.training for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    try:
        with torch.inference_mode():
            for model in models.values():
                model.eval()
                for _ in range(warmup):
                    model(**inputs)
            for _ in range(repeats):
                for name, model in models.items():
                    started = time.perf_counter()
                    model(**inputs)
                    times[name].append(time.perf_counter() - started)
    finally:
        for name, model in models.items():
            model.train(modes[name])
    return {name: statistics.median(values) for name, values in times.items()}


def measure_latency(model: nn.Module, batch_size: int = 32, seq_len: int = 128, repeats: int = 10,
                    warmup: int = 2, seed: int = 0) -> float:
    """Median seconds of one forward pass on a [batch_size, seq_len] batch of random ids."""
    return compare_latency({"model": model}, batch_size, seq_len, repeats, warmup, seed)["model"]
