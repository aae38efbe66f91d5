"""The PyTorch references of kprune_ext against independent naive loop implementations (float64).

These run whether or not the compiled extension is built."""
from __future__ import annotations

import math

import pytest
import torch

from kprune_ext import reference


def naive_importance(act, grad, offsets):
    a, g = act.double(), grad.double()
    units = a.shape[1]
    grad_sq = [0.0] * units
    act_sq = [0.0] * units
    offs = [int(o) for o in offsets]
    for lo, hi in zip(offs[:-1], offs[1:]):
        for u in range(units):
            s = 0.0
            for t in range(lo, hi):
                s += float(a[t, u]) * float(g[t, u])
            grad_sq[u] += s * s
    for t in range(offs[0], offs[-1]):
        for u in range(units):
            act_sq[u] += float(a[t, u]) ** 2
    return torch.tensor(grad_sq, dtype=torch.float64), torch.tensor(act_sq, dtype=torch.float64)


def naive_activation(x: float, activation: str) -> float:
    if activation == "gelu":
        return 0.5 * x * (1 + math.erf(x / math.sqrt(2)))
    if activation == "gelu_tanh":
        return 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    if activation == "relu":
        return max(x, 0.0)
    return x / (1 + math.exp(-x))


@pytest.mark.parametrize("offsets", [[0, 3, 3, 9], [2, 7], [0], [0, 9], [4, 4]])
def test_accumulate_importance_reference(offsets):
    torch.manual_seed(0)
    act, grad = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 5, dtype=torch.float64)
    off = torch.tensor(offsets)
    grad_sq, act_sq = torch.ones(5), torch.ones(5)
    reference.accumulate_importance(act, grad, off, grad_sq, act_sq)
    want_grad_sq, want_act_sq = naive_importance(act, grad, off)
    torch.testing.assert_close(grad_sq.double(), 1 + want_grad_sq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(act_sq.double(), 1 + want_act_sq, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("columns", [None, [3, 0, 2], []])
def test_gram_accumulate_reference(columns):
    torch.manual_seed(1)
    a, b = torch.randn(7, 4), torch.randn(7, 3)
    cols = None if columns is None else torch.tensor(columns, dtype=torch.long)
    sel = list(range(4)) if columns is None else columns
    k = len(sel)
    gram, cross = torch.full((k, k), 0.5), torch.full((k, 3), 0.5)
    reference.gram_accumulate(a, b, cols, gram, cross)
    want_gram = [[0.5 + sum(float(a[t, i]) * float(a[t, j]) for t in range(7)) for j in sel] for i in sel]
    want_cross = [[0.5 + sum(float(a[t, i]) * float(b[t, m]) for t in range(7)) for m in range(3)] for i in sel]
    torch.testing.assert_close(gram, torch.tensor(want_gram, dtype=torch.float32).reshape(k, k), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cross, torch.tensor(want_cross, dtype=torch.float32).reshape(k, 3), rtol=1e-5, atol=1e-5)


def naive_damped_solve(gram, rhs, damping):
    """Gaussian elimination on (G + damping * mean(diag) I) X = R, one system."""
    k = gram.shape[0]
    diag_mean = sum(float(gram[i, i]) for i in range(k)) / k
    lam = (diag_mean if diag_mean > 0 else 1.0) * damping
    a = [[float(gram[i, j]) + (lam if i == j else 0.0) for j in range(k)] + [float(v) for v in rhs[i]] for i in range(k)]
    for c in range(k):
        p = max(range(c, k), key=lambda r: abs(a[r][c]))
        a[c], a[p] = a[p], a[c]
        for r in range(k):
            if r != c:
                f = a[r][c] / a[c][c]
                a[r] = [x - f * y for x, y in zip(a[r], a[c])]
    return torch.tensor([[a[i][k + j] / a[i][i] for j in range(rhs.shape[1])] for i in range(k)])


def test_solve_damped_reference():
    torch.manual_seed(2)
    a = torch.randn(3, 20, 6, dtype=torch.float64)
    gram, rhs = (a.transpose(1, 2) @ a).float(), torch.randn(3, 6, 2)
    got = reference.solve_damped(gram, rhs, damping=1e-3)
    for i in range(3):
        torch.testing.assert_close(got[i], naive_damped_solve(gram[i], rhs[i], 1e-3).float(), rtol=1e-4, atol=1e-5)


def test_solve_damped_reference_escalates_and_raises():
    gram, rhs = -torch.eye(4), torch.ones(4, 1)
    x = reference.solve_damped(gram, rhs, damping=1e-4, max_tries=8)  # needs lambda = 10 (6th try)
    torch.testing.assert_close(x, torch.full((4, 1), 1 / 9.0))
    with pytest.raises(RuntimeError, match="failed after 3"):
        reference.solve_damped(gram, rhs, damping=1e-4, max_tries=3)


@pytest.mark.parametrize("activation", reference.ACTIVATIONS)
def test_masked_ffn_reference(activation):
    torch.manual_seed(3)
    x = torch.randn(4, 3, dtype=torch.float64)
    w_in, b_in = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    w_out, b_out = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    kept, mask = torch.tensor([4, 1]), torch.tensor([0.5, 2.0], dtype=torch.float64)
    out, act = reference.masked_ffn(x, w_in, b_in, w_out, b_out, kept, mask, activation)
    for t in range(4):
        acts = [naive_activation(sum(float(x[t, i]) * float(w_in[u, i]) for i in range(3)) + float(b_in[u]), activation)
                for u in kept.tolist()]
        assert act[t].tolist() == pytest.approx(acts, rel=1e-9, abs=1e-12)
        for o in range(2):
            want = float(b_out[o]) + sum(acts[j] * float(mask[j]) * float(w_out[o, u]) for j, u in enumerate(kept.tolist()))
            assert float(out[t, o]) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_masked_attention_output_reference():
    torch.manual_seed(4)
    heads, hs = 3, 2
    context = torch.randn(4, heads * hs, dtype=torch.float64)
    w_out, b_out = torch.randn(5, heads * hs, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    kept, mask = torch.tensor([2, 0]), torch.tensor([0.5, 3.0], dtype=torch.float64)
    out, ctx = reference.masked_attention_output(context, w_out, b_out, kept, mask, hs)
    for t in range(4):
        cols = [h * hs + i for h in kept.tolist() for i in range(hs)]
        assert ctx[t].tolist() == [float(context[t, c]) for c in cols]
        for o in range(5):
            want = float(b_out[o]) + sum(float(context[t, h * hs + i]) * float(mask[j]) * float(w_out[o, h * hs + i])
                                         for j, h in enumerate(kept.tolist()) for i in range(hs))
            assert float(out[t, o]) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_unknown_activation_raises():
    with pytest.raises(ValueError, match="not supported"):
        reference.apply_activation(torch.zeros(1), "tanh")
