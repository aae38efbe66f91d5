"""Kernel benchmarks at BERT-base shapes (16,384 tokens, hidden 768, 3,072 neurons, 12 heads of 64).

Every case checks its result against the PyTorch reference before timing. Groups compare the
compiled op ("ext") with its reference ("ref") and with the baseline the kernel must beat:
  importance   ref = the unfused PyTorch composition                      target ext >= 3x
  importance[logical groups]  accumulate_group_sums (per-group sums of logical batches spread over
               compute batches, K-prune's gradient_groups="batch"); ref = its PyTorch reference
  masked_ffn / masked_attention  "dense" = full sublayer, 0/1 mask multiplied in, 50% kept  target >= 1.5x
  solve        "lstsq" = torch.linalg.lstsq on the same damped normal equations            target >= 1.5x
  activation_backward  ref = F.gelu under autograd and its backward (no target; it feeds the run)
  attention    "aten" = F.scaled_dot_product_attention with a key mask (what the sublayers ran before; no
               target: the op is there for batch invariance, speed is checked not to regress)
Run: pytest benchmarks/test_bench_kernels.py --benchmark-only --benchmark-group-by=group
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kprune_ext
from kprune_ext import ops, reference

pytestmark = pytest.mark.skipif(
    not kprune_ext.EXTENSION_LOADED, reason=f"compiled extension not loaded: {kprune_ext.EXTENSION_ERROR}"
)

TOKENS, HIDDEN, NEURONS, HEADS, HEAD_SIZE, SAMPLE_LEN = 16_384, 768, 3_072, 12, 64, 128
ROUNDS = dict(rounds=3, warmup_rounds=1, iterations=1)


def assert_close(got, want, tol=1e-4):
    got, want = (got,) if torch.is_tensor(got) else got, (want,) if torch.is_tensor(want) else want
    for g, w in zip(got, want):
        scale = max(float(w.abs().max()), 1.0)
        torch.testing.assert_close(g.float(), w.float(), rtol=tol, atol=tol * scale)


# ---- accumulate_importance --------------------------------------------------------------------

@pytest.fixture(scope="module")
def importance_inputs():
    g = torch.Generator().manual_seed(0)
    act = torch.randn(TOKENS, NEURONS, generator=g)
    grad = torch.randn(TOKENS, NEURONS, generator=g) * 1e-3
    return act, grad


@pytest.mark.parametrize("groups", ["samples", "batch"])
@pytest.mark.parametrize("impl", ["ext", "ref"])
def test_importance(benchmark, importance_inputs, groups, impl):
    act, grad = importance_inputs
    step = SAMPLE_LEN if groups == "samples" else TOKENS
    offsets = torch.arange(0, TOKENS + 1, step)
    fn = ops.accumulate_importance if impl == "ext" else reference.accumulate_importance

    def run(impl_fn=fn):
        out = (torch.zeros(NEURONS), torch.zeros(NEURONS))
        impl_fn(act, grad, offsets, *out)
        return out

    assert_close(run(), run(reference.accumulate_importance))
    benchmark.group = f"importance[{groups}]"
    benchmark.pedantic(run, **ROUNDS)


@pytest.mark.parametrize("impl", ["ext", "ref"])
def test_importance_logical_groups(benchmark, importance_inputs, impl):
    """One compute batch of 128 samples from 32 logical groups (4 samples each, as a length-sorted batch
    mixes groups), the per-group sums added to a float64 [32, 3,072] accumulator."""
    act, grad = importance_inputs
    offsets = torch.arange(0, TOKENS + 1, SAMPLE_LEN)
    segment_group = torch.randperm(offsets.numel() - 1, generator=torch.Generator().manual_seed(4)) % 32
    fn = ops.accumulate_group_sums if impl == "ext" else reference.accumulate_group_sums

    def run(impl_fn=fn):
        out = (torch.zeros(32, NEURONS, dtype=torch.float64), torch.zeros(NEURONS))
        impl_fn(act, grad, offsets, segment_group, *out)
        return out

    assert_close(run(), run(reference.accumulate_group_sums))
    benchmark.group = "importance[logical groups]"
    benchmark.pedantic(run, **ROUNDS)


# ---- activation_backward ----------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["ext", "ref"])
def test_activation_backward(benchmark, importance_inputs, impl):
    """The FFN activation recomputed with its backward (the pruning loop's sublayer backward), against
    the reference: F.gelu under autograd, then its backward."""
    preact, grad = importance_inputs
    bias = torch.linspace(-0.5, 0.5, NEURONS)
    fn = ops.activation_backward if impl == "ext" else reference.activation_backward
    assert_close(fn(preact, bias, grad, "gelu"), reference.activation_backward(preact, bias, grad, "gelu"))
    benchmark.group = "activation_backward (gelu, 16,384 x 3,072)"
    benchmark.pedantic(fn, args=(preact, bias, grad, "gelu"), **ROUNDS)


# ---- masked sublayers ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ffn_inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(TOKENS, HIDDEN, generator=g)
    w_in, b_in = torch.randn(NEURONS, HIDDEN, generator=g) / HIDDEN**0.5, torch.randn(NEURONS, generator=g) * 0.1
    w_out, b_out = torch.randn(HIDDEN, NEURONS, generator=g) / NEURONS**0.5, torch.randn(HIDDEN, generator=g) * 0.1
    kept = torch.randperm(NEURONS, generator=g)[: NEURONS // 2].sort().values
    mask = torch.ones(kept.numel())
    full_mask = torch.zeros(NEURONS)
    full_mask[kept] = 1.0
    return x, w_in, b_in, w_out, b_out, kept, mask, full_mask


def dense_masked_ffn(x, w_in, b_in, w_out, b_out, full_mask):
    act = F.gelu(F.linear(x, w_in, b_in))
    return F.linear(act * full_mask, w_out, b_out), act


@pytest.mark.parametrize("impl", ["ext", "ref", "dense"])
def test_masked_ffn(benchmark, ffn_inputs, impl):
    x, w_in, b_in, w_out, b_out, kept, mask, full_mask = ffn_inputs
    args = (x, w_in, b_in, w_out, b_out, kept, mask, "gelu")
    want = reference.masked_ffn(*args)
    if impl == "dense":
        run = lambda: dense_masked_ffn(x, w_in, b_in, w_out, b_out, full_mask)  # noqa: E731
        assert_close(run()[0], want[0])
    else:
        run = (lambda: ops.masked_ffn(*args)) if impl == "ext" else (lambda: reference.masked_ffn(*args))
        assert_close(run(), want)
    benchmark.group = "masked_ffn forward (50% kept)"
    benchmark.pedantic(run, **ROUNDS)


@pytest.mark.parametrize("impl", ["ext", "ref"])
def test_masked_ffn_backward(benchmark, ffn_inputs, impl):
    x, w_in, b_in, w_out, b_out, kept, mask, _ = ffn_inputs
    fn = ops.masked_ffn if impl == "ext" else reference.masked_ffn
    grad_out = torch.randn(TOKENS, HIDDEN, generator=torch.Generator().manual_seed(2))

    def grads(impl_fn):
        xr, mr = x.detach().requires_grad_(), mask.detach().requires_grad_()
        out, _ = impl_fn(xr, w_in, b_in, w_out, b_out, kept, mr, "gelu")
        out.backward(grad_out)
        return xr.grad, mr.grad

    want = grads(reference.masked_ffn)
    run = lambda: grads(fn)  # noqa: E731
    assert_close(run(), want, tol=1e-3)
    benchmark.group = "masked_ffn forward+backward (50% kept)"
    benchmark.pedantic(run, **ROUNDS)


@pytest.fixture(scope="module")
def attention_inputs():
    g = torch.Generator().manual_seed(3)
    context = torch.randn(TOKENS, HIDDEN, generator=g)
    w_out, b_out = torch.randn(HIDDEN, HIDDEN, generator=g) / HIDDEN**0.5, torch.randn(HIDDEN, generator=g) * 0.1
    kept = torch.randperm(HEADS, generator=g)[: HEADS // 2].sort().values
    mask = torch.ones(kept.numel())
    full_mask = torch.zeros(HEADS)
    full_mask[kept] = 1.0
    return context, w_out, b_out, kept, mask, full_mask.repeat_interleave(HEAD_SIZE)


@pytest.mark.parametrize("impl", ["ext", "ref", "dense"])
def test_masked_attention_output(benchmark, attention_inputs, impl):
    context, w_out, b_out, kept, mask, full_mask = attention_inputs
    args = (context, w_out, b_out, kept, mask, HEAD_SIZE)
    want = reference.masked_attention_output(*args)
    if impl == "dense":
        run = lambda: F.linear(context * full_mask, w_out, b_out)  # noqa: E731
        assert_close(run(), want[0])
    else:
        run = (lambda: ops.masked_attention_output(*args)) if impl == "ext" else (lambda: reference.masked_attention_output(*args))
        assert_close(run(), want)
    benchmark.group = "masked_attention_output forward (50% kept)"
    benchmark.pedantic(run, **ROUNDS)


# ---- softmax attention over each sequence's real keys ------------------------------------------

@pytest.fixture(scope="module")
def qkv_inputs():
    """128 sequences of 128 positions (16,384 tokens) with 64-128 real tokens each, the rest padding; q, k, v
    as views of one projection output, as the sublayers pass them."""
    g = torch.Generator().manual_seed(5)
    batch = TOKENS // SAMPLE_LEN
    fused = torch.randn(batch, SAMPLE_LEN, 3 * HIDDEN, generator=g)
    return fused, torch.randint(SAMPLE_LEN // 2, SAMPLE_LEN + 1, (batch,), generator=g)


def aten_attention(q, k, v, lengths, scale):
    """What the sublayers ran before the compiled op: aten's attention with a key mask, on [b, h, s, d] views."""
    mask = (torch.arange(q.shape[1])[None, :] < lengths[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=mask, scale=scale)
    return out.transpose(1, 2)


ATTENTION = {"ext": ops.attention, "ref": reference.attention, "aten": aten_attention}


@pytest.mark.parametrize("impl", ["ext", "ref", "aten"])
@pytest.mark.parametrize("passes", ["forward", "forward+backward"])
def test_attention(benchmark, qkv_inputs, impl, passes):
    fused, lengths = qkv_inputs

    def run(fn=ATTENTION[impl]):
        leaf = fused.detach().requires_grad_(passes != "forward")
        q, k, v = (t.view(*fused.shape[:2], HEADS, HEAD_SIZE) for t in leaf.split(HIDDEN, -1))
        out = fn(q, k, v, lengths, HEAD_SIZE ** -0.5)
        if passes == "forward":
            return out
        return out, torch.autograd.grad(out, leaf, torch.ones_like(out))[0]

    assert_close(run(), run(reference.attention))
    benchmark.group = f"attention {passes} (12 heads of 64, 64-128 of 128 tokens real)"
    benchmark.pedantic(run, **ROUNDS)


# ---- least squares ----------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["ext", "ref"])
@pytest.mark.parametrize("sums", ["float64", "float32"])
def test_gram_accumulate(benchmark, importance_inputs, impl, sums):
    """float64 sums are the tuner's (kprune.tuning); the target is a column slice of act (strided, which
    oneDNN's float32 matmul once read element by element)."""
    act, _ = importance_inputs
    target = act[:, :HIDDEN]
    columns = torch.arange(0, NEURONS, 2)
    fn = ops.gram_accumulate if impl == "ext" else reference.gram_accumulate
    dtype = getattr(torch, sums)

    def run(impl_fn=fn):
        out = (torch.zeros(columns.numel(), columns.numel(), dtype=dtype), torch.zeros(columns.numel(), HIDDEN, dtype=dtype))
        impl_fn(act, target, columns, *out)
        return out

    assert_close(run(), run(reference.gram_accumulate))
    benchmark.group = f"gram_accumulate (1,536 of 3,072 columns, {sums} sums)"
    benchmark.pedantic(run, **ROUNDS)


def normal_equations(batch, k, m, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, 4 * k, k, generator=g)
    gram = a.transpose(1, 2) @ a
    return gram, torch.randn(batch, k, m, generator=g)


def damped(gram, damping=1e-4):
    lam = gram.diagonal(dim1=-2, dim2=-1).mean(-1) * damping
    return gram + lam[:, None, None] * torch.eye(gram.shape[-1])


@pytest.mark.parametrize("impl", ["ext", "ref", "lstsq"])
@pytest.mark.parametrize("shape", ["heads 12x64", "ffn 1x3072"])
def test_solve_damped(benchmark, impl, shape):
    batch, k = (12, 64) if shape.startswith("heads") else (1, 3072)
    gram, rhs = normal_equations(batch, k, HIDDEN, seed=k)
    want = reference.solve_damped(gram, rhs)
    if impl == "lstsq":
        shifted = damped(gram)
        run = lambda: torch.linalg.lstsq(shifted, rhs).solution  # noqa: E731
    else:
        run = (lambda: ops.solve_damped(gram, rhs)) if impl == "ext" else (lambda: reference.solve_damped(gram, rhs))
    assert_close(run(), want, tol=1e-3)
    benchmark.group = f"solve_damped {shape} (768 right-hand sides)"
    benchmark.pedantic(run, **ROUNDS)
