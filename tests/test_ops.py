"""Compaction bookkeeping and the torch backend of compress/extract, against plain lists and
the whole-op reference (``naive.compress_reference`` / ``extract_reference``)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smakit.ops import build_index, compress, extract
from smakit.ops.compaction import naive


def reference_positions(active: torch.Tensor) -> list[list[int]]:
    return [row.nonzero().flatten().tolist() for row in active]


@st.composite
def masks(draw, max_b=4, max_l=19):
    B = draw(st.integers(1, max_b))
    L = draw(st.integers(1, max_l))
    kind = draw(st.sampled_from(["random", "empty", "full", "mixed"]))
    if kind == "empty":
        return torch.zeros(B, L, dtype=torch.bool)
    if kind == "full":
        return torch.ones(B, L, dtype=torch.bool)
    bits = draw(st.lists(st.booleans(), min_size=B * L, max_size=B * L))
    active = torch.tensor(bits, dtype=torch.bool).view(B, L)
    if kind == "mixed":  # force one empty and one full row
        active[0] = False
        active[-1] = True if B > 1 else active[-1]
    return active


@settings(max_examples=150, deadline=None)
@given(active=masks(), D=st.integers(1, 5))
def test_compress_keeps_order_and_positions(active, D):
    B, L = active.shape
    x = torch.randn(B, L, D)
    packed = compress(x, active)
    want = reference_positions(active)
    K = max(max(len(p) for p in want), 1)
    assert packed.values.shape == (B, K, D)
    assert packed.counts.tolist() == [len(p) for p in want]
    for b in range(B):
        n = len(want[b])
        assert packed.positions[b, :n].tolist() == want[b]
        assert (packed.positions[b, n:] == -1).all()
        assert packed.mask[b].tolist() == [True] * n + [False] * (K - n)
        torch.testing.assert_close(packed.values[b, :n], x[b, want[b]])
        assert (packed.values[b, n:] == 0).all()


@settings(max_examples=100, deadline=None)
@given(active=masks(), D=st.integers(1, 4))
def test_flat_layout_lists_tokens_row_major(active, D):
    B, L = active.shape
    x = torch.randn(B, L, D)
    packed = compress(x, active, layout="flat")
    rows, cols = active.nonzero(as_tuple=True)
    assert packed.batch_index.tolist() == rows.tolist()
    assert packed.positions.tolist() == cols.tolist()
    torch.testing.assert_close(packed.values, x[rows, cols])
    out = extract(packed.values, packed)
    torch.testing.assert_close(out, x * active.unsqueeze(-1))


@settings(max_examples=100, deadline=None)
@given(active=masks(), D=st.integers(1, 4), layout=st.sampled_from(["padded", "flat"]))
def test_extract_of_compress_is_identity_on_active_tokens(active, D, layout):
    x = torch.randn(*active.shape, D)
    gate = torch.rand(active.shape)
    packed = compress(x, active, layout=layout)
    out = extract(packed.values, packed, gate)
    want = torch.where(active.unsqueeze(-1), x * gate.unsqueeze(-1), torch.zeros(()))
    torch.testing.assert_close(out, want)
    assert (out[~active] == 0).all()


@settings(max_examples=60, deadline=None)
@given(active=masks(), cap=st.integers(1, 6))
def test_fixed_slots_drop_overflow(active, cap):
    B, L = active.shape
    x = torch.randn(B, L, 2)
    packed = compress(x, active, slots=cap)
    assert packed.values.shape == (B, cap, 2)
    for b, pos in enumerate(reference_positions(active)):
        kept = pos[:cap]
        assert packed.positions[b, : len(kept)].tolist() == kept
        assert int(packed.counts[b]) == len(kept)
    out = extract(packed.values, packed)
    kept_mask = active & (active.cumsum(1) <= cap)
    torch.testing.assert_close(out, x * kept_mask.unsqueeze(-1))


def test_skipped_tokens_get_exact_zeros_even_when_padding_output_is_nan():
    x = torch.randn(2, 6, 3)
    active = torch.tensor([[1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    packed = compress(x, active)
    h = packed.values.clone()
    h[~packed.mask] = float("nan")  # a module may produce anything on padding slots
    out = extract(h, packed, torch.rand(2, 6))
    assert torch.isfinite(out).all()
    assert (out[~active] == 0).all()


@pytest.mark.parametrize("backward", [False, True])
def test_padding_slots_are_exact_zeros_when_the_last_token_is_nan(backward):
    """Padding slots read a clamped index (the last token) before they are zeroed: a NaN or
    inf there must not leak into the padding of values, grad_h or grad_gate."""
    x = torch.randn(3, 5, 4)
    x[-1, -1] = float("nan")  # the row every padding slot's clamped index reads
    x[-1, -2] = float("inf")
    active = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    packed = compress(x, active)
    assert (packed.values[~packed.mask] == 0).all() and torch.isfinite(packed.values).all()
    if backward:
        h = packed.values.clone().requires_grad_(True)
        gate = torch.rand(3, 5, requires_grad=True)
        extract(h, packed, gate).backward(x)  # the NaN and inf sit at skipped tokens
        assert (h.grad[~packed.mask] == 0).all()
        torch.testing.assert_close(h.grad[packed.mask], (x * gate.detach().unsqueeze(-1))[active])
        assert torch.isfinite(gate.grad[active]).all()


@pytest.mark.parametrize("layout", ["padded", "flat"])
@pytest.mark.parametrize("B,L,D", [(1, 1, 1), (3, 7, 5), (2, 13, 3)])
def test_gradcheck_float64(B, L, D, layout):
    torch.manual_seed(B * 100 + L)
    active = torch.rand(B, L) > 0.4
    active[0, 0] = True
    x = torch.randn(B, L, D, dtype=torch.float64, requires_grad=True)
    gate = torch.rand(B, L, dtype=torch.float64, requires_grad=True)
    w = torch.randn(D, D + 1, dtype=torch.float64, requires_grad=True)

    def fn(x, gate, w):
        packed = compress(x, active, layout=layout)
        side = packed.compact(x.square())  # compact_like
        return extract(torch.tanh(packed.values @ w) * side.sum(-1, keepdim=True), packed, gate)

    assert torch.autograd.gradcheck(fn, (x, gate, w))
    assert torch.autograd.gradgradcheck(fn, (x, gate, w))  # every backward is differentiable


@settings(max_examples=60, deadline=None)
@given(active=masks(), D=st.integers(1, 4), layout=st.sampled_from(["padded", "flat"]),
       cap=st.sampled_from([None, 1, 3]))
def test_torch_backend_matches_whole_op_reference(active, D, layout, cap):
    B, L = active.shape
    flat = layout == "flat"
    x = torch.randn(B, L, D, dtype=torch.float64, requires_grad=True)
    gate = torch.rand(B, L, dtype=torch.float64, requires_grad=True)
    packed = compress(x, active, slots=cap, layout=layout, backend="torch")
    ref = naive.compress_reference(x, active, cap, flat)
    for name in ("values", "positions", "mask", "counts", "batch_index"):
        got, want = getattr(packed, name), ref[name]
        assert (got is None and want is None) or torch.equal(got, want), name
    assert torch.equal(packed.kept(), ref["kept"])
    y = extract(packed.values.sin(), packed, gate, backend="torch")
    y_ref = naive.extract_reference(ref["values"].sin(), ref["kept"], gate, flat)
    torch.testing.assert_close(y, y_ref)
    w = torch.randn_like(y)
    got = torch.autograd.grad((y * w).sum(), (x, gate))
    want = torch.autograd.grad((y_ref * w).sum(), (x, gate))
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("layout", ["padded", "flat"])
def test_hessian_vector_product_matches_reference(layout):
    torch.manual_seed(0)
    B, L, D = 3, 9, 5
    flat = layout == "flat"
    active = torch.rand(B, L) > 0.5
    x, gate = torch.randn(B, L, D), torch.rand(B, L)
    v = (torch.randn(B, L, D), torch.randn(B, L))

    def ours(x, gate):
        packed = compress(x, active, layout=layout, backend="torch")
        y = extract(torch.tanh(packed.values) * packed.compact(x.square()), packed, gate, backend="torch")
        return (y.square() * gate.unsqueeze(-1)).sum()

    def reference(x, gate):
        values = naive.compress_reference(x, active, None, flat)["values"]
        side = naive.compress_reference(x.square(), active, None, flat)["values"]
        y = naive.extract_reference(torch.tanh(values) * side, active, gate, flat)
        return (y.square() * gate.unsqueeze(-1)).sum()

    got = torch.autograd.functional.hvp(ours, (x, gate), v)[1]
    want = torch.autograd.functional.hvp(reference, (x, gate), v)[1]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_build_index_is_compress_without_values():
    active = torch.rand(3, 7) > 0.5
    for layout in ("padded", "flat"):
        index, packed = build_index(active, 2, layout), compress(torch.randn(3, 7, 2), active, slots=2, layout=layout)
        assert index.values is None and index.slots == packed.slots
        for name in ("mask", "positions", "counts", "scatter_index"):
            assert torch.equal(getattr(index, name), getattr(packed, name)), name
        assert torch.equal(index.kept(), packed.kept())


def test_gradients_match_dense_masked_computation():
    torch.manual_seed(0)
    B, L, D = 3, 11, 4
    active = torch.rand(B, L) > 0.5
    lin = torch.nn.Linear(D, D)
    x1 = torch.randn(B, L, D, requires_grad=True)
    g1 = torch.rand(B, L, requires_grad=True)
    x2, g2 = x1.detach().clone().requires_grad_(), g1.detach().clone().requires_grad_()
    packed = compress(x1, active)
    y1 = extract(lin(packed.values), packed, g1)
    y2 = lin(x2) * (g2 * active).unsqueeze(-1)
    grad = torch.randn_like(y1)
    (y1 * grad).sum().backward()
    (y2 * grad).sum().backward()
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(g1.grad, g2.grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_stays_half(dtype):
    x = torch.randn(2, 9, 8, dtype=dtype, requires_grad=True)
    active = torch.rand(2, 9) > 0.5
    gate = torch.rand(2, 9, requires_grad=True)
    packed = compress(x, active)
    assert packed.values.dtype == dtype
    out = extract(packed.values * 2, packed, gate)
    assert out.dtype == dtype
    out.float().sum().backward()
    assert x.grad.dtype == dtype and gate.grad.dtype == torch.float32
    want = (x.detach().float() * 2 * (gate.detach() * active).unsqueeze(-1)).to(dtype)
    torch.testing.assert_close(out, want, rtol=1e-2, atol=1e-2)


def test_all_inactive_batch_still_runs_module_with_one_slot():
    x = torch.randn(2, 5, 3, requires_grad=True)
    packed = compress(x, torch.zeros(2, 5, dtype=torch.bool))
    assert packed.values.shape == (2, 1, 3) and not packed.mask.any()
    lin = torch.nn.Linear(3, 3)
    extract(lin(packed.values), packed, torch.rand(2, 5)).sum().backward()
    assert lin.weight.grad is not None and (lin.weight.grad == 0).all()
    assert (x.grad == 0).all()


def test_empty_sequence():
    x = torch.randn(2, 0, 3)
    packed = compress(x, torch.zeros(2, 0, dtype=torch.bool))
    out = extract(packed.values, packed)
    assert out.shape == (2, 0, 3)


def test_compact_like_uses_same_pattern():
    x = torch.randn(2, 6, 3)
    other = torch.randn(2, 6)
    active = torch.rand(2, 6) > 0.5
    packed = compress(x, active)
    c = packed.compact(other)
    assert c.shape == packed.mask.shape
    torch.testing.assert_close(c[packed.mask], other[active])


@pytest.mark.parametrize(
    "x,active,match",
    [
        (torch.randn(4, 3), torch.ones(4, 3, dtype=torch.bool), r"x must have shape \[B, L, D\]"),
        (torch.randn(2, 4, 3), torch.ones(2, 5, dtype=torch.bool), r"active must have shape \[B, L\] = \(2, 4\)"),
        (torch.randn(2, 4, 3), torch.ones(2, 4), r"active must be a bool"),
        (torch.randn(2, 4, 3), torch.ones(2, 4, dtype=torch.bool, device="meta"), r"active must be on the device of x"),
    ],
)
def test_compress_rejects_bad_input(x, active, match):
    with pytest.raises((ValueError, TypeError), match=match):
        compress(x, active)


def test_extract_rejects_bad_shapes():
    packed = compress(torch.randn(2, 4, 3), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"h must have shape \[B, K, D'\]"):
        extract(torch.randn(2, 3, 3), packed)
    with pytest.raises(ValueError, match=r"gate must have shape \[B, L\] = \(2, 4\)"):
        extract(packed.values, packed, torch.rand(2, 5))
    with pytest.raises(ValueError, match="slots must be a positive int"):
        compress(torch.randn(2, 4, 3), torch.ones(2, 4, dtype=torch.bool), slots=0)
