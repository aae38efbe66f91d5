"""The compiled attention over each sequence's real keys (torch.ops.kprune.attention) against its PyTorch
reference and aten's masked attention: forward, gradients, every CPU instruction-set variant, padding
invariance, opcheck and bad input. Skipped when the extension is not built."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import kprune_ext
from kprune_ext import ops, reference
from test_ops_compiled import isa  # noqa: F401  (fixture: every CPU instruction-set variant)

pytestmark = pytest.mark.skipif(
    not kprune_ext.EXTENSION_LOADED, reason=f"compiled extension not loaded: {kprune_ext.EXTENSION_ERROR}"
)


def qkv(batch, seq, heads, head_size, seed=0):
    """q, k, v as views of one [batch, seq, 3 * heads * head_size] projection output (strided, as the pruner
    passes them), leaves for autograd through the fused tensor."""
    g = torch.Generator().manual_seed(seed)
    fused = torch.randn(batch, seq, 3 * heads * head_size, generator=g).requires_grad_()
    q, k, v = (t.view(batch, seq, heads, head_size) for t in fused.split(heads * head_size, -1))
    return fused, q, k, v


CASES = [  # (batch, seq, heads, head_size, lengths)
    (3, 7, 2, 5, [7, 4, 1]),          # generic head size, a one-token sequence
    (4, 50, 12, 32, [50, 37, 50, 2]),  # MiniLM heads, GLUE lengths
    (2, 40, 4, 64, [40, 17]),          # BERT-base heads
    (1, 129, 2, 64, [129]),            # keys past a multiple of 16, rows past a multiple of 4
    (2, 6, 3, 32, [6, 0]),             # a sequence without keys: zeros
]


@pytest.mark.parametrize("batch,seq,heads,head_size,lengths", CASES)
def test_attention_matches_reference_and_aten(batch, seq, heads, head_size, lengths, isa):
    fused, q, k, v = qkv(batch, seq, heads, head_size)
    lengths = torch.tensor(lengths)
    scale = 1 / math.sqrt(head_size)
    got = ops.attention(q, k, v, lengths, scale)
    want = reference.attention(q, k, v, lengths, scale)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    real = lengths > 0   # aten's masked attention, where a sequence has keys
    mask = (torch.arange(seq)[None, :] < lengths[:, None])[:, None, None, :]
    aten = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=mask).transpose(1, 2)
    torch.testing.assert_close(got[real], aten[real], rtol=1e-5, atol=1e-5)
    # gradients, with an upstream gradient on padded query rows too (they attend to the real keys)
    g = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
    (grad_got,) = torch.autograd.grad(got, fused, g)
    (grad_want,) = torch.autograd.grad(want, fused, g)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch,seq,heads,head_size,lengths", CASES)
def test_bfloat16_inputs_give_what_widened_inputs_give(batch, seq, heads, head_size, lengths, isa):
    """bf16 q, k, v (as autocast's projections make them) are widened inside the kernel: the output is the
    float32 kernel's on the widened values, bit for bit, and the gradients are its gradients rounded to bf16,
    as autograd's cast back would round them; the reference agrees."""
    fused, _, _, _ = qkv(batch, seq, heads, head_size)
    low = fused.detach().bfloat16().requires_grad_()
    q, k, v = (t.view(batch, seq, heads, head_size) for t in low.split(heads * head_size, -1))
    wide = low.detach().float().requires_grad_()
    qw, kw, vw = (t.view(batch, seq, heads, head_size) for t in wide.split(heads * head_size, -1))
    lengths = torch.tensor(lengths)
    got, want = ops.attention(q, k, v, lengths, 0.25), ops.attention(qw, kw, vw, lengths, 0.25)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    torch.testing.assert_close(reference.attention(q, k, v, lengths, 0.25), want, rtol=1e-5, atol=1e-5)
    g = torch.randn(got.shape, generator=torch.Generator().manual_seed(3))
    (grad_low,) = torch.autograd.grad(got, low, g)
    (grad_wide,) = torch.autograd.grad(want, wide, g)
    assert grad_low.dtype == torch.bfloat16 and torch.equal(grad_low, grad_wide.bfloat16())


def test_attention_gradcheck_in_float64_reference_agrees():
    """The compiled float32 gradients against the reference's in float64 (an independent check of the
    backward formulas, not only of two float32 implementations)."""
    fused, q, k, v = qkv(2, 9, 2, 32, seed=3)
    lengths = torch.tensor([9, 5])
    got = ops.attention(q, k, v, lengths, 0.25)
    g = torch.randn(got.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    (grad_got,) = torch.autograd.grad(got, fused, g.float())
    fused64 = fused.detach().double().requires_grad_()
    q64, k64, v64 = (t.view(2, 9, 2, 32) for t in fused64.split(64, -1))
    (grad_want,) = torch.autograd.grad(reference.attention(q64, k64, v64, lengths, 0.25), fused64, g)
    torch.testing.assert_close(grad_got.double(), grad_want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("head_size", [5, 32, 64])
def test_real_rows_do_not_depend_on_the_padded_length(head_size, isa):
    """A sequence's real rows, forward and every gradient, are bit-identical whatever else its batch holds
    and however far it is padded: what makes the pruning scores independent of the compute batching."""
    g = torch.Generator().manual_seed(head_size)
    heads, n = 3, 23
    seq_q, seq_k, seq_v = (torch.randn(n, heads, head_size, generator=g) for _ in range(3))
    grad = torch.randn(n, heads, head_size, generator=g)
    results = []
    for padded, others in ((n, 0), (n + 1, 2), (64, 1), (97, 3)):
        batch = 1 + others

        def place(x):
            out = torch.randn(batch, padded, heads, head_size, generator=g)
            out[0, :n] = x
            out[0, n:] = 0
            return out.requires_grad_()

        q, k, v = place(seq_q), place(seq_k), place(seq_v)
        lengths = torch.tensor([n] + [int(torch.randint(1, padded + 1, (1,), generator=g)) for _ in range(others)])
        out = ops.attention(q, k, v, lengths, head_size ** -0.5)
        upstream = torch.zeros_like(out)
        upstream[0, :n] = grad
        upstream[1:] = torch.randn(others, padded, heads, head_size, generator=g)
        grads = torch.autograd.grad(out, (q, k, v), upstream)
        results.append([out[0, :n]] + [t[0, :n] for t in grads])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_attention_is_deterministic_across_thread_counts():
    fused, q, k, v = qkv(3, 30, 4, 32, seed=5)
    lengths = torch.tensor([30, 11, 29])
    previous = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = ops.attention(q, k, v, lengths, 0.2)
            outs.append((out, *torch.autograd.grad(out, fused, torch.ones_like(out))))
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_attention_opcheck():
    _, q, k, v = qkv(2, 6, 2, 32, seed=6)
    args = (q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_(),
            v.detach().clone().requires_grad_(), torch.tensor([6, 3]), 0.3)
    torch.library.opcheck(torch.ops.kprune.attention.default, args)
    low = tuple(t.detach().bfloat16().requires_grad_() for t in args[:3])
    torch.library.opcheck(torch.ops.kprune.attention.default, (*low, *args[3:]))


@pytest.mark.parametrize("change,error,match", [
    (lambda q, lengths: (q.double(), lengths), TypeError, "all float32 or all bfloat16"),
    (lambda q, lengths: (q.bfloat16(), lengths), TypeError, "all float32 or all bfloat16"),   # k, v float32
    (lambda q, lengths: (q[:, :3], lengths), ValueError, "one shape"),
    (lambda q, lengths: (q, lengths[:1]), ValueError, "lengths must be int64"),
    (lambda q, lengths: (q, lengths.int()), ValueError, "lengths must be int64"),
    (lambda q, lengths: (q, torch.tensor([5, 9])), ValueError, r"lengths must lie in \[0, 5\]"),
    (lambda q, lengths: (q, torch.tensor([-1, 2])), ValueError, r"lengths must lie in \[0, 5\]"),
    (lambda q, lengths: (q[0], lengths), ValueError, "q must be"),
])
def test_attention_rejects_bad_input(change, error, match):
    q, k, v = (torch.randn(2, 5, 2, 8) for _ in range(3))
    bad_q, lengths = change(q, torch.tensor([5, 2]))
    with pytest.raises(error, match=match):
        torch.ops.kprune.attention(bad_q, k, v, lengths, 0.5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_sublayer_attention_of_a_model_in_another_dtype(dtype):
    """kprune.sublayers hands the kernel float32 or bf16 projections as they are and widens any other dtype
    (a float64 or float16 model), giving the context back in the model's dtype."""
    from conftest import tiny_model
    from kprune.adapters import EncoderAdapter
    from kprune.sublayers import attention_context
    model = tiny_model("bert", "classification", layers=1).to(dtype)
    view = EncoderAdapter(model).layer(0)
    x = torch.randn(2, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(7)).to(dtype)
    key_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    got = attention_context(view, x, key_mask)
    heads, size = view.num_heads, view.head_size
    q, k, v = (torch.nn.functional.linear(x.double(), p.weight.double(), p.bias.double()).view(2, 5, heads, size)
               .transpose(1, 2) for p in (view.query, view.key, view.value))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :]).transpose(1, 2).reshape(2, 5, -1)
    assert got.dtype == dtype
    tol = {torch.float64: 1e-6, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
