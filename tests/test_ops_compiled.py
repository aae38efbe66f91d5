"""The compiled ops (torch.ops.kprune.*) against the PyTorch references: shapes x dtypes, gradients,
torch.library.opcheck, every CPU instruction-set variant. Skipped when the extension is not built."""
from __future__ import annotations

import pytest
import torch

import kprune_ext
from kprune_ext import ops, reference

pytestmark = pytest.mark.skipif(
    not kprune_ext.EXTENSION_LOADED, reason=f"compiled extension not loaded: {kprune_ext.EXTENSION_ERROR}"
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
HIDDEN_UNITS = [(32, 48), (768, 3072), (1024, 4096)]  # tiny, BERT-base, BERT-large


def close(got, want, dtype, scale_tol=True):
    """Per-dtype tolerance relative to the reference's magnitude."""
    tol = TOL[dtype]
    scale = max(float(want.abs().max()), 1.0) if (scale_tol and want.numel()) else 1.0
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol * scale)


def isa_variants():
    if not kprune_ext.EXTENSION_LOADED:
        return ["generic"]
    best = ops.cpu_capability()
    order = ["generic", "avx2", "avx512"]
    return order[: order.index(best) + 1]


def gemm_backends():
    """Both float32 GEMM backends where this torch has oneDNN's matmul, else "aten" alone."""
    if not kprune_ext.EXTENSION_LOADED:
        return ["aten"]
    has_onednn = torch._C._dispatch_has_kernel_for_dispatch_key("mkldnn::_linear_pointwise", "CPU")
    return ["onednn", "aten"] if has_onednn else ["aten"]


@pytest.fixture(params=gemm_backends())
def gemm(request):
    """Every GEMM of the op on this backend (oneDNN from the smallest size on)."""
    previous, min_macs = ops.gemm_backend(), ops.gemm_min_macs()
    assert ops.set_gemm_backend(request.param, min_macs=0) == request.param
    yield request.param
    ops.set_gemm_backend(previous, min_macs=min_macs)


@pytest.fixture(params=isa_variants())
def isa(request):
    previous = ops.cpu_capability()
    assert ops.set_cpu_capability(request.param) == request.param
    yield request.param
    ops.set_cpu_capability(previous)


# ---- shared host/device math ------------------------------------------------------------------

@pytest.mark.parametrize("activation", reference.ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_activation_math_matches_torch(activation, dtype):
    x = torch.linspace(-12, 12, 20001, dtype=dtype)
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ops.activation_math(x, activation), reference.apply_activation(x, activation), rtol=tol, atol=tol)
    xg = x.double().requires_grad_()
    reference.apply_activation(xg, activation).sum().backward()
    torch.testing.assert_close(ops.activation_math(x, activation, derivative=True), xg.grad.to(dtype), rtol=tol, atol=5 * tol)


# ---- accumulate_importance --------------------------------------------------------------------

def importance_case(tokens, units, lengths, dtype, device="cpu", start=0, layout="contiguous"):
    g = torch.Generator().manual_seed(tokens * 7 + units)
    act = torch.randn(tokens, units, generator=g).to(dtype)
    grad = (torch.randn(tokens, units, generator=g) * 0.1).to(dtype)
    if layout == "column_slice":
        act = torch.cat([act, act], 1)[:, 1: units + 1]
        grad = torch.cat([grad, grad], 1)[:, 1: units + 1]
    elif layout == "transposed":
        act, grad = act.t().contiguous().t(), grad.t().contiguous().t()
    offsets = torch.tensor([start] + lengths, dtype=torch.long).cumsum(0)
    return act.to(device), grad.to(device), offsets.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize(
    "tokens,units,lengths,start",
    [(40, 48, [10, 0, 25], 2), (64, 768, [16, 16, 32], 0), (32, 3072, [32], 0), (24, 4096, [8, 8, 8], 0),
     (5, 7, [], 0), (0, 16, [0, 0], 0), (300, 1000, [128, 100, 72], 0)],
)
def test_accumulate_importance(device, dtype, tokens, units, lengths, start):
    act, grad, offsets = importance_case(tokens + start, units, lengths, dtype, device, start)
    got = [torch.full((units,), 0.25, device=device) for _ in range(2)]
    want = [torch.full((units,), 0.25, device=device) for _ in range(2)]
    ops.accumulate_importance(act, grad, offsets, *got)
    reference.accumulate_importance(act, grad, offsets, *want)
    for g, w in zip(got, want):
        close(g, w, torch.float32)


@pytest.mark.parametrize("layout", ["column_slice", "transposed"])
def test_accumulate_importance_non_contiguous(layout, isa):
    act, grad, offsets = importance_case(50, 600, [20, 30], torch.float32, layout=layout)
    assert not act.is_contiguous()
    got, want = [torch.zeros(600) for _ in range(2)], [torch.zeros(600) for _ in range(2)]
    ops.accumulate_importance(act, grad, offsets, *got)
    reference.accumulate_importance(act, grad, offsets, *want)
    for g, w in zip(got, want):
        close(g, w, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_accumulate_importance_isa_variants(dtype, isa):
    act, grad, offsets = importance_case(200, 1100, [128, 72], dtype)
    got, want = [torch.zeros(1100) for _ in range(2)], [torch.zeros(1100) for _ in range(2)]
    ops.accumulate_importance(act, grad, offsets, *got)
    reference.accumulate_importance(act, grad, offsets, *want)
    for g, w in zip(got, want):
        close(g, w, torch.float32)


@pytest.mark.parametrize(
    "offsets,match", [([3, 1], "non-decreasing"), ([0, 99], "lie in"), ([-1, 2], "lie in")]
)
def test_accumulate_importance_rejects_bad_offsets(offsets, match):
    act = torch.randn(10, 4)
    with pytest.raises(RuntimeError, match=match):
        ops.accumulate_importance(act, act, torch.tensor(offsets), torch.zeros(4), torch.zeros(4))


# ---- accumulate_group_sums --------------------------------------------------------------------

def group_sums_case(tokens, units, lengths, groups, dtype, device="cpu", start=0, layout="contiguous"):
    """act, grad, offsets as importance_case, and each segment's group drawn from [0, groups)."""
    act, grad, offsets = importance_case(tokens + start, units, lengths, dtype, device, start, layout)
    g = torch.Generator().manual_seed(len(lengths) * 31 + groups)
    segment_group = torch.randint(0, max(groups, 1), (len(lengths),), generator=g)
    return act, grad, offsets, segment_group.to(device)


def group_sums_outputs(groups, units, device="cpu"):
    """Non-zero starting values, so that the op must add to them."""
    sums = torch.linspace(-1, 1, groups * units, dtype=torch.float64, device=device).reshape(groups, units)
    return sums, torch.full((units,), 0.25, device=device)


def group_sums_loop(act, grad, offsets, segment_group, groups):
    """The definition as a float64 loop over segments and their tokens, one row at a time."""
    a, g = act.double(), grad.double()
    sums, act_sq = torch.zeros(groups, act.shape[1], dtype=torch.float64), torch.zeros(act.shape[1], dtype=torch.float64)
    for s in range(segment_group.numel()):
        for t in range(int(offsets[s]), int(offsets[s + 1])):
            sums[int(segment_group[s])] += a[t] * g[t]
            act_sq += a[t] * a[t]
    return sums, act_sq


GROUP_SUMS_CASES = [  # tokens, units, segment lengths, groups, first token
    (40, 48, [10, 0, 25, 3], 3, 2), (64, 768, [16, 16, 32], 2, 0), (300, 1000, [128, 100, 60, 12], 3, 0),
    (600, 70, [300, 300], 1, 0), (24, 4096, [8, 8, 8], 5, 0), (5, 7, [], 2, 0), (0, 16, [0, 0], 2, 0),
    (6, 0, [2, 4], 2, 0),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("tokens,units,lengths,groups,start", GROUP_SUMS_CASES)
def test_accumulate_group_sums(device, dtype, tokens, units, lengths, groups, start, isa):
    act, grad, offsets, segment_group = group_sums_case(tokens, units, lengths, groups, dtype, device, start)
    got, want = group_sums_outputs(groups, units, device), group_sums_outputs(groups, units, device)
    ops.accumulate_group_sums(act, grad, offsets, segment_group, *got)
    reference.accumulate_group_sums(act, grad, offsets, segment_group, *want)
    # fp32/bf16/fp16 sums run in fp32 within chunks of 256 tokens, then in float64
    close(got[0], want[0], torch.float64 if dtype == torch.float64 else torch.float32)
    close(got[1], want[1], torch.float32)


@pytest.mark.parametrize("tokens,units,lengths,groups,start", GROUP_SUMS_CASES[:4])
def test_accumulate_group_sums_reference_matches_float64_loop(tokens, units, lengths, groups, start):
    act, grad, offsets, segment_group = group_sums_case(tokens, units, lengths, groups, torch.float64, start=start)
    sums, act_sq = torch.zeros(groups, units, dtype=torch.float64), torch.zeros(units)
    reference.accumulate_group_sums(act, grad, offsets, segment_group, sums, act_sq)
    want_sums, want_sq = group_sums_loop(act, grad, offsets, segment_group, groups)
    torch.testing.assert_close(sums, want_sums, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(act_sq.double(), want_sq, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", ["column_slice", "transposed"])
def test_accumulate_group_sums_non_contiguous(layout, isa):
    act, grad, offsets, segment_group = group_sums_case(50, 600, [20, 30], 2, torch.float32, layout=layout)
    assert not act.is_contiguous()
    got = (torch.zeros(600, 2, dtype=torch.float64).t(), torch.zeros(1200)[::2])  # strided outputs too
    want = (torch.zeros(2, 600, dtype=torch.float64), torch.zeros(600))
    ops.accumulate_group_sums(act, grad, offsets, segment_group, *got)
    reference.accumulate_group_sums(act, grad, offsets, segment_group, *want)
    for g, w in zip(got, want):
        close(g, w, torch.float32)


def test_accumulate_group_sums_is_deterministic_across_thread_counts():
    act, grad, offsets, segment_group = group_sums_case(300, 1000, [128, 100, 60, 12], 2, torch.float32)
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out = group_sums_outputs(2, 1000)
            ops.accumulate_group_sums(act, grad, offsets, segment_group, *out)
            results.append(out)
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        assert all(torch.equal(x, y) for x, y in zip(results[0], other))


@pytest.mark.parametrize("change,match", [
    (dict(offsets=[3, 1, 5]), "non-decreasing"),
    (dict(offsets=[0, 4, 99]), "lie in"),
    (dict(segment_group=[0, 2]), r"segment_group values must lie in \[0, 2\)"),
    (dict(segment_group=[-1, 0]), "segment_group values must lie in"),
    (dict(segment_group=[0]), "one group per segment"),
    (dict(segment_group=torch.tensor([0, 1], dtype=torch.int32)), "segment_group must be a 1-D int64"),
    (dict(group_sums=torch.zeros(2, 4)), "group_sums must be float64"),
    (dict(group_sums=torch.zeros(2, 5, dtype=torch.float64)), "group_sums must be float64"),
    (dict(act_sq_sum=torch.zeros(4, dtype=torch.float64)), "act_sq_sum must be float32"),
    (dict(grad=torch.zeros(10, 4, dtype=torch.float64)), "grad must have dtype"),
    (dict(grad=torch.zeros(9, 4)), "grad must match act"),
])
def test_accumulate_group_sums_rejects_bad_input(change, match):
    args = dict(act=torch.randn(10, 4), grad=torch.randn(10, 4), offsets=[0, 4, 10], segment_group=[0, 1],
                group_sums=torch.zeros(2, 4, dtype=torch.float64), act_sq_sum=torch.zeros(4))
    args.update(change)
    for key in ("offsets", "segment_group"):
        if not torch.is_tensor(args[key]):
            args[key] = torch.tensor(args[key])
    with pytest.raises(RuntimeError, match=match):
        ops.accumulate_group_sums(**args)


# ---- gram_accumulate --------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("units,columns", [(48, None), (48, [5, 0, 47, 3]), (3072, "half"), (768, []), (64, "transposed")])
def test_gram_accumulate(device, dtype, units, columns, gemm):
    g = torch.Generator().manual_seed(units)
    a = torch.randn(40, units, generator=g).to(dtype)
    if columns == "transposed":
        a, columns = a.t().contiguous().t(), [1, 2, 60]
    b = torch.randn(40, 24, generator=g).to(dtype)
    if columns == "half":
        columns = list(range(0, units, 2))
    cols = None if columns is None else torch.tensor(columns, dtype=torch.long, device=device)
    k = units if columns is None else len(columns)
    got = [torch.ones(k, k, device=device), torch.ones(k, 24, device=device)]
    want = [t.clone() for t in got]
    ops.gram_accumulate(a.to(device), b.to(device), cols, *got)
    reference.gram_accumulate(a.to(device), b.to(device), cols, *want)
    for x, y in zip(got, want):
        close(x, y, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gram_accumulate_float64_accumulators(dtype, gemm):
    """float64 gram/cross: exact products, so the sums over two cuts of the tokens agree to float64
    rounding (float32 accumulators differ by float32 rounding), and the op equals the reference."""
    g = torch.Generator().manual_seed(7)
    a = torch.randn(300, 64, generator=g).to(dtype)
    b = torch.randn(300, 16, generator=g).to(dtype)
    cols = torch.tensor([3, 0, 63, 10, 11])
    sums = {}
    for acc in (torch.float64, torch.float32):
        for cut in ((0, 300), (0, 7, 150, 299, 300)):
            got = [torch.zeros(5, 5, dtype=acc), torch.zeros(5, 16, dtype=acc)]
            for lo, hi in zip(cut[:-1], cut[1:]):
                ops.gram_accumulate(a[lo:hi], b[lo:hi], cols, *got)
            sums[acc, len(cut)] = got
        want = [torch.zeros(5, 5, dtype=acc), torch.zeros(5, 16, dtype=acc)]
        reference.gram_accumulate(a, b, cols, *want)
        for x, y in zip(sums[acc, 2], want):
            torch.testing.assert_close(x, y, rtol=1e-12 if acc == torch.float64 else 1e-5,
                                       atol=1e-9 if acc == torch.float64 else 1e-3)
    exact = [(a.double()[:, cols].t() @ a.double()[:, cols]), (a.double()[:, cols].t() @ b.double())]
    for one, many, truth in zip(sums[torch.float64, 2], sums[torch.float64, 5], exact):
        torch.testing.assert_close(one, many, rtol=1e-14, atol=1e-12)
        torch.testing.assert_close(one, truth, rtol=1e-14, atol=1e-12)


def test_gram_accumulate_rejects_mixed_accumulators():
    a = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="cross must be Double"):
        ops.gram_accumulate(a, a, None, torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, 3))
    with pytest.raises(RuntimeError, match="gram must be float32 or float64"):
        ops.gram_accumulate(a, a, None, torch.zeros(3, 3, dtype=torch.float16), torch.zeros(3, 3, dtype=torch.float16))


def test_gram_accumulate_rejects_bad_columns():
    a = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="columns"):
        ops.gram_accumulate(a, a, torch.tensor([3]), torch.zeros(1, 1), torch.zeros(1, 3))


# ---- solve_damped -----------------------------------------------------------------------------

def spd(batch, k, m, seed=0, rows_per_unknown=3):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*batch, rows_per_unknown * k, k, generator=g, dtype=torch.float64)
    return (a.transpose(-1, -2) @ a).float(), torch.randn(*batch, k, m, generator=g)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "batch,k,m", [((12,), 64, 768), ((), 200, 30), ((2, 3), 16, 5), ((), 1100, 8), ((4,), 0, 3), ((3,), 5, 0)]
)
def test_solve_damped(device, batch, k, m, isa):
    gram, rhs = spd(batch, k, m, seed=k)
    got = ops.solve_damped(gram.to(device), rhs.to(device))
    want = reference.solve_damped(gram.to(device), rhs.to(device))
    assert got.dtype == torch.float32 and got.shape == want.shape
    tol = 1e-4 if k > 1024 else 1e-5  # float32 factorisation above k = 1024
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * max(float(want.abs().max()) if want.numel() else 1, 1))


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_solve_damped_precision(precision):
    gram, rhs = spd((3,), 40, 6)
    torch.testing.assert_close(ops.solve_damped(gram, rhs, precision=precision), reference.solve_damped(gram, rhs),
                               rtol=1e-4, atol=1e-4)


def test_solve_damped_broadcasts_batch():
    gram, _ = spd((), 10, 1)
    rhs = torch.randn(3, 10, 4)
    torch.testing.assert_close(ops.solve_damped(gram, rhs), reference.solve_damped(gram, rhs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [8, 300])
def test_solve_damped_singular_and_escalation(k):
    zero = torch.zeros(2, k, k)
    rhs = torch.randn(2, k, 3)
    torch.testing.assert_close(ops.solve_damped(zero, rhs), reference.solve_damped(zero, rhs))
    indefinite = -torch.eye(k).expand(2, k, k).clone()
    indefinite[1] = torch.eye(k)  # one system fine at once, one needs 5 escalations
    torch.testing.assert_close(ops.solve_damped(indefinite, rhs), reference.solve_damped(indefinite, rhs), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="failed after 3"):
        ops.solve_damped(indefinite, rhs, max_tries=3)
    with pytest.raises(RuntimeError, match="failed after"):
        ops.solve_damped(torch.full((k, k), float("nan")), rhs[0])


# ---- masked FFN -------------------------------------------------------------------------------

def ffn_case(tokens, d, units, kept, dtype, device="cpu", bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d, generator=g)
    w_in = torch.randn(units, d, generator=g) / d**0.5
    w_out = torch.randn(d, units, generator=g) / units**0.5
    b_in, b_out = torch.randn(units, generator=g) * 0.1, torch.randn(d, generator=g) * 0.1
    if kept == "half":
        kept = torch.randperm(units, generator=g)[: units // 2]
    kept = torch.tensor(kept, dtype=torch.long) if isinstance(kept, list) else kept
    mask = torch.rand(kept.numel(), generator=g) + 0.5
    t = [x, w_in, b_in if bias else None, w_out, b_out if bias else None]
    t = [None if v is None else v.to(dtype=dtype, device=device) for v in t]
    return (*t, kept.to(device), mask.to(dtype=dtype, device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("activation", reference.ACTIVATIONS)
@pytest.mark.parametrize("d,units", HIDDEN_UNITS)
def test_masked_ffn(device, dtype, activation, d, units, gemm):
    args = ffn_case(6, d, units, "half", dtype, device)
    got = ops.masked_ffn(*args, activation)
    want = reference.masked_ffn(*args, activation)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        close(g, w, dtype)


@pytest.mark.parametrize("kept,bias", [([], True), ([], False), (list(range(48)), False), (list(range(48)), True),
                                       (list(reversed(range(48))), True), ([7], True)])
def test_masked_ffn_edge_cases(kept, bias):
    args = ffn_case(5, 32, 48, kept, torch.float32, bias=bias)
    for g, w in zip(ops.masked_ffn(*args, "gelu"), reference.masked_ffn(*args, "gelu")):
        close(g, w, torch.float32)


def test_masked_ffn_non_contiguous_and_zero_tokens():
    x, *rest = ffn_case(8, 32, 48, "half", torch.float32)
    x_nc = x.t().contiguous().t()
    for g, w in zip(ops.masked_ffn(x_nc, *rest, "silu"), reference.masked_ffn(x_nc, *rest, "silu")):
        close(g, w, torch.float32)
    for g, w in zip(ops.masked_ffn(x[:0], *rest, "silu"), reference.masked_ffn(x[:0], *rest, "silu")):
        assert g.shape == w.shape


def test_masked_ffn_rejects_unknown_activation():
    with pytest.raises(ValueError, match="not supported"):
        ops.masked_ffn(*ffn_case(2, 4, 6, [1], torch.float32), "tanh")


def ffn_grads(fn, args, activation, weight_out, weight_act):
    x, w_in, b_in, w_out, b_out, kept, mask = args
    x, mask = x.detach().requires_grad_(), mask.detach().requires_grad_()
    out, act = fn(x, w_in, b_in, w_out, b_out, kept, mask, activation)
    ((out * weight_out).sum() + (act * weight_act).sum()).backward()
    return x.grad, mask.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", reference.ACTIVATIONS)
def test_masked_ffn_gradients(dtype, activation, isa):
    args = ffn_case(24, 32, 96, "half", dtype)
    g = torch.Generator().manual_seed(5)
    weight_out, weight_act = torch.randn(24, 32, generator=g).to(dtype), torch.randn(24, 48, generator=g).to(dtype)
    for got, want in zip(ffn_grads(ops.masked_ffn, args, activation, weight_out, weight_act),
                         ffn_grads(reference.masked_ffn, args, activation, weight_out, weight_act)):
        close(got, want, dtype)


@pytest.mark.parametrize("order", ["identity", "reversed"])
def test_masked_ffn_gradients_every_unit_kept(order):
    """All units kept in order takes the no-copy path for the weights; reversed must not."""
    kept = list(range(48)) if order == "identity" else list(reversed(range(48)))
    args = ffn_case(10, 32, 48, kept, torch.float32)
    g = torch.Generator().manual_seed(3)
    weight_out, weight_act = torch.randn(10, 32, generator=g), torch.randn(10, 48, generator=g)
    for fn in (ops.masked_ffn, direct_masked_ffn):
        for got, want in zip(ffn_grads(fn, args, "gelu", weight_out, weight_act),
                             ffn_grads(reference.masked_ffn, args, "gelu", weight_out, weight_act)):
            close(got, want, torch.float32)


def direct_masked_ffn(*args):
    """The op itself (autograd recomputes the pre-activation), not the wrapper (which saves it)."""
    return torch.ops.kprune.masked_ffn.default(*args)


@pytest.mark.parametrize("activation", ["gelu", "silu"])
def test_masked_ffn_gradients_recompute_path(activation):
    args = ffn_case(16, 32, 96, "half", torch.float32)
    g = torch.Generator().manual_seed(7)
    weight_out, weight_act = torch.randn(16, 32, generator=g), torch.randn(16, 48, generator=g)
    for got, want in zip(ffn_grads(direct_masked_ffn, args, activation, weight_out, weight_act),
                         ffn_grads(reference.masked_ffn, args, activation, weight_out, weight_act)):
        close(got, want, torch.float32)


@pytest.mark.parametrize("activation", reference.ACTIVATIONS)
def test_masked_ffn_gradcheck(activation):
    x, w_in, b_in, w_out, b_out, kept, mask = ffn_case(5, 4, 7, [6, 0, 3], torch.float64, seed=1)
    x.requires_grad_()
    mask.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, m: ops.masked_ffn(x, w_in, b_in, w_out, b_out, kept, m, activation), (x, mask))


# ---- activation backward ----------------------------------------------------------------------

def activation_case(tokens, units, dtype, device="cpu", bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    preact = torch.randn(tokens, units, generator=g) * 2
    b = torch.randn(units, generator=g) * 0.5
    grad = torch.randn(tokens, units, generator=g)
    return (preact.to(dtype=dtype, device=device), b.to(dtype=dtype, device=device) if bias else None,
            grad.to(dtype=dtype, device=device))


def autograd_activation_backward(preact, bias, grad_act, activation):
    """An independent check of the reference: torch autograd through F.linear's bias and the activation."""
    z = preact.double().requires_grad_()
    act = reference.apply_activation(z + (0 if bias is None else bias.double()), activation)
    (grad,) = torch.autograd.grad(act, z, grad_act.double())
    return act.detach(), grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("activation", reference.ACTIVATIONS)
@pytest.mark.parametrize("tokens,units", [(7, 48), (64, 3072), (16, 4096)])  # tiny, BERT-base, BERT-large FFN
def test_activation_backward(device, dtype, activation, tokens, units, isa):
    args = activation_case(tokens, units, dtype, device)
    got = ops.activation_backward(*args, activation)
    want = reference.activation_backward(*args, activation)
    exact = autograd_activation_backward(*args, activation)
    for g, w, e in zip(got, want, exact):
        assert g.dtype == w.dtype == dtype and g.shape == w.shape
        close(g, w, dtype)
        close(w, e.to(dtype), dtype)


@pytest.mark.parametrize("tokens,units,bias", [(0, 48, True), (5, 0, True), (5, 48, False), (1, 1, True)])
def test_activation_backward_edge_cases(tokens, units, bias):
    args = activation_case(tokens, units, torch.float32, bias=bias)
    for g, w in zip(ops.activation_backward(*args, "gelu"), reference.activation_backward(*args, "gelu")):
        assert g.shape == w.shape
        close(g, w, torch.float32)


def test_activation_backward_non_contiguous():
    preact, bias, grad = activation_case(48, 16, torch.float32)
    preact_nc, grad_nc = preact.t().contiguous().t(), grad.t().contiguous().t()
    assert not preact_nc.is_contiguous()
    for g, w in zip(ops.activation_backward(preact_nc, bias, grad_nc, "silu"),
                    reference.activation_backward(preact, bias, grad, "silu")):
        close(g, w, torch.float32)


def test_activation_backward_rejects_bad_input():
    preact, bias, grad = activation_case(4, 6, torch.float32)
    with pytest.raises(RuntimeError, match="grad_act must match"):
        torch.ops.kprune.activation_backward.default(preact, bias, grad[:, :5], "gelu")
    with pytest.raises(RuntimeError, match="bias must be"):
        torch.ops.kprune.activation_backward.default(preact, bias[:5], grad, "gelu")
    with pytest.raises(ValueError, match="not supported"):
        ops.activation_backward(preact, bias, grad, "tanh")


# ---- masked attention output ------------------------------------------------------------------

def attention_case(tokens, d, head_size, kept, dtype, device="cpu", bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    heads = d // head_size
    context = torch.randn(tokens, d, generator=g)
    w_out = torch.randn(d, d, generator=g) / d**0.5
    b_out = torch.randn(d, generator=g) * 0.1
    if kept == "half":
        kept = torch.randperm(heads, generator=g)[: heads // 2]
    kept = torch.tensor(kept, dtype=torch.long) if isinstance(kept, list) else kept
    mask = torch.rand(kept.numel(), generator=g) + 0.5
    return (context.to(dtype=dtype, device=device), w_out.to(dtype=dtype, device=device),
            b_out.to(dtype=dtype, device=device) if bias else None, kept.to(device), mask.to(dtype=dtype, device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("d,head_size", [(32, 8), (768, 64), (1024, 64)])
def test_masked_attention_output(device, dtype, d, head_size, gemm):
    args = attention_case(6, d, head_size, "half", dtype, device)
    got = ops.masked_attention_output(*args, head_size)
    want = reference.masked_attention_output(*args, head_size)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        close(g, w, dtype)


@pytest.mark.parametrize("kept,bias", [([], True), ([], False), ([0, 1, 2, 3], False), ([0, 1, 2, 3], True),
                                       ([3, 2, 1, 0], True), ([3, 0], True)])
def test_masked_attention_output_edge_cases(kept, bias):
    context, *rest = attention_case(5, 32, 8, kept, torch.float32, bias=bias)
    for ctx in (context, context.t().contiguous().t()):
        for g, w in zip(ops.masked_attention_output(ctx, *rest, 8), reference.masked_attention_output(ctx, *rest, 8)):
            close(g, w, torch.float32)


def attention_grads(fn, args, head_size, weight_out, weight_act):
    context, w_out, b_out, kept, mask = args
    context, mask = context.detach().requires_grad_(), mask.detach().requires_grad_()
    out, act = fn(context, w_out, b_out, kept, mask, head_size)
    ((out * weight_out).sum() + (act * weight_act).sum()).backward()
    return context.grad, mask.grad


@pytest.mark.parametrize("dtype,kept", [(torch.float32, [3, 1]), (torch.bfloat16, [3, 1]),
                                         (torch.float32, [0, 1, 2, 3]), (torch.float32, [1, 0, 3, 2])])
def test_masked_attention_output_gradients(dtype, kept):
    args = attention_case(20, 64, 16, kept, dtype)
    g = torch.Generator().manual_seed(6)
    weight_out = torch.randn(20, 64, generator=g).to(dtype)
    weight_act = torch.randn(20, 16 * len(kept), generator=g).to(dtype)
    for got, want in zip(attention_grads(ops.masked_attention_output, args, 16, weight_out, weight_act),
                         attention_grads(reference.masked_attention_output, args, 16, weight_out, weight_act)):
        close(got, want, dtype)


def test_masked_attention_output_gradcheck():
    context, w_out, b_out, kept, mask = attention_case(4, 12, 3, [2, 0], torch.float64)
    context.requires_grad_()
    mask.requires_grad_()
    assert torch.autograd.gradcheck(lambda c, m: ops.masked_attention_output(c, w_out, b_out, kept, m, 3), (context, mask))


# ---- linear (the ops' GEMMs) --------------------------------------------------------------------

def linear_case(shape, n, dtype, weight_layout="contiguous", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g).to(dtype)
    if weight_layout == "transposed":
        w = torch.randn(shape[-1], n, generator=g).to(dtype).t()
    elif weight_layout == "sliced":   # the transpose of a column slice: neither row-major nor a transpose
        w = torch.randn(shape[-1], n + 3, generator=g).to(dtype)[:, :n].t()
    else:
        w = torch.randn(n, shape[-1], generator=g).to(dtype)
    return x, w, torch.randn(n, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape,n", [((37, 384), 1536), ((3, 21, 96), 40), ((5, 1536), 384), ((0, 24), 8), ((6, 0), 8)])
@pytest.mark.parametrize("weight_layout", ["contiguous", "transposed", "sliced"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_float64(dtype, shape, n, weight_layout, bias, gemm):
    x, w, b = linear_case(shape, n, dtype, weight_layout)
    got = ops.linear(x, w, b if bias else None)
    want = x.double() @ w.double().t() + (b.double() if bias else 0)
    assert got.dtype == dtype and got.shape == (*shape[:-1], n)
    close(got, want, dtype)


def test_linear_non_contiguous_input(gemm):
    x, w, b = linear_case((64, 48), 32, torch.float32)
    x_nc = x.t().contiguous().t()
    close(ops.linear(x_nc, w, b), torch.nn.functional.linear(x.double(), w.double(), b.double()), torch.float32)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients_match_autograd_of_f_linear(bias, gemm):
    x, w, b = linear_case((4, 9, 24), 16, torch.float32, seed=3)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    refs = [t.double().requires_grad_() for t in (x, w, b)]
    grad = torch.randn(4, 9, 16, generator=torch.Generator().manual_seed(4))
    ops.linear(leaves[0], leaves[1], leaves[2] if bias else None).backward(grad)
    torch.nn.functional.linear(refs[0], refs[1], refs[2] if bias else None).backward(grad.double())
    for got, want in zip(leaves[:3 if bias else 2], refs):
        close(got.grad, want.grad, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(6, 8), (2, 3, 8), (70, 8)])
def test_linear_output_can_be_written_in_place_under_autograd(shape, dtype, gemm):
    """The result is a fresh tensor, never a view (sublayer_backward adds into it); in bf16 too, whose rows
    are padded to a multiple of 64 for the GEMM."""
    x, w = torch.randn(*shape, dtype=dtype, requires_grad=True), torch.randn(5, 8, dtype=dtype)
    y = ops.linear(x, w)
    assert y._base is None and y.shape == (*shape[:-1], 5)
    y.add_(1.0).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(*shape[:-1], 5, dtype=dtype) @ w)


def test_linear_gradcheck():
    x, w, b = (t.double().requires_grad_() for t in linear_case((3, 5, 4), 6, torch.float64, seed=5))
    torch.autograd.gradcheck(ops.linear, (x, w, b))
    torch.autograd.gradcheck(lambda x, w: ops.linear(x, w), (x, w))


@pytest.mark.parametrize("shape", [(8, 32), (3, 41, 32), (128, 32)])
def test_linear_under_autocast_casts_like_f_linear(shape):
    """Under bf16 autocast the op computes what autocast's F.linear does (bf16 operands; on CPU through the
    op, whose bf16 GEMMs pad the rows to a multiple of 64), forward and backward."""
    x, w, b = linear_case(shape, 16, torch.float32)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        got, want = ops.linear(xs[0], w, b), torch.nn.functional.linear(xs[1], w, b)
    assert got.dtype == want.dtype == torch.bfloat16 and got.shape == want.shape
    # equal here; bf16 rounding apart where a CPU's kernel sums a row otherwise for another row count
    torch.testing.assert_close(got, want, rtol=1.6e-2, atol=1e-2)
    grad = torch.randn(got.shape, generator=torch.Generator().manual_seed(1)).bfloat16()
    got.backward(grad)
    want.backward(grad)
    assert xs[0].grad.dtype == torch.float32
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1.6e-2, atol=1e-2)


def test_linear_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="linear: x"):
        torch.ops.kprune.linear(torch.randn(3, 4), torch.randn(5, 6))
    with pytest.raises(ValueError, match="bias must be"):
        torch.ops.kprune.linear(torch.randn(3, 4), torch.randn(5, 4), torch.randn(4))


def test_set_gemm_backend_rejects_unknown_name_and_size():
    with pytest.raises(ValueError, match="onednn"):
        ops.set_gemm_backend("mkl")
    with pytest.raises(ValueError, match="min_macs"):
        ops.set_gemm_backend("onednn", min_macs=-5)
    with pytest.raises(ValueError, match="min_macs"):
        torch.ops.kprune.set_gemm_backend("onednn", -5)


def test_small_gemms_stay_on_aten_below_min_macs(monkeypatch):
    """Below the size threshold a GEMM runs at::mm: its result is aten's, bit for bit."""
    if "onednn" not in gemm_backends():
        pytest.skip("this torch has no oneDNN matmul")
    x, w, b = linear_case((37, 384), 1536, torch.float32)
    previous, min_macs = ops.gemm_backend(), ops.gemm_min_macs()
    try:
        ops.set_gemm_backend("aten")
        aten = ops.linear(x, w, b)
        ops.set_gemm_backend("onednn", min_macs=37 * 384 * 1536 + 1)
        assert torch.equal(ops.linear(x, w, b), aten)
        ops.set_gemm_backend("onednn", min_macs=37 * 384 * 1536)
        close(ops.linear(x, w, b), aten.double(), torch.float32)
    finally:
        ops.set_gemm_backend(previous, min_macs=min_macs)


# ---- torch.library.opcheck --------------------------------------------------------------------

def opcheck_cases():
    act, grad, offsets = importance_case(12, 8, [5, 7], torch.float32)
    ffn = ffn_case(6, 8, 12, [1, 4, 9], torch.float32)
    attention = attention_case(6, 8, 2, [3, 0], torch.float32)
    gram, rhs = spd((2,), 5, 3)
    a = torch.randn(6, 5)
    return {
        "accumulate_importance": (act, grad, offsets, torch.zeros(8), torch.zeros(8)),
        "accumulate_group_sums": (act, grad, offsets, torch.tensor([1, 1]), torch.zeros(3, 8, dtype=torch.float64),
                                  torch.zeros(8)),
        "gram_accumulate": (a, torch.randn(6, 3), torch.tensor([4, 1]), torch.zeros(2, 2), torch.zeros(2, 3)),
        "solve_damped": (gram, rhs, 1e-4, 8, 0),
        "masked_ffn": (ffn[0].requires_grad_(), *ffn[1:6], ffn[6].requires_grad_(), "gelu"),
        "masked_ffn_with_preact": (ffn[0], *ffn[1:6], ffn[6], "silu"),
        "masked_attention_output": (attention[0].requires_grad_(), *attention[1:4], attention[4].requires_grad_(), 2),
        "activation_backward": (*activation_case(5, 7, torch.float32), "gelu_tanh"),
        "linear": (torch.randn(2, 3, 5).requires_grad_(), torch.randn(4, 5).requires_grad_(), torch.randn(4).requires_grad_()),
    }


@pytest.mark.parametrize("name", ["accumulate_importance", "accumulate_group_sums", "gram_accumulate", "solve_damped", "masked_ffn",
                                  "masked_ffn_with_preact", "masked_attention_output", "activation_backward", "linear"])
def test_opcheck(name):
    torch.library.opcheck(getattr(torch.ops.kprune, name).default, opcheck_cases()[name])


# ---- dispatch ---------------------------------------------------------------------------------

def test_backend_info():
    info = kprune_ext.backend_info()
    assert info["extension_loaded"] and info["cpu_capability"] in ("generic", "avx2", "avx512")


def test_env_var_routes_to_reference_at_call_time(monkeypatch):
    calls = []
    monkeypatch.setattr(reference, "accumulate_importance", lambda *args: calls.append(args))
    monkeypatch.setenv("KPRUNE_DISABLE_EXT", "1")
    act = torch.randn(3, 2)
    ops.accumulate_importance(act, act, torch.tensor([0, 3]), torch.zeros(2), torch.zeros(2))
    assert len(calls) == 1
