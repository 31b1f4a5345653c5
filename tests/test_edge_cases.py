"""Bad input fails early and clearly; edge shapes work; hypothesis fuzzes shapes and masks."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from smakit import TopKRouter, sma

D = 8


def linear(dim=D, out=None):
    torch.manual_seed(0)
    return nn.Linear(dim, out or dim)


class SeqModule(nn.Module):
    """A sequence module that checks the compaction protocol it is given."""

    def __init__(self, dim):
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, x, mask, positions):
        assert mask.shape == positions.shape == x.shape[:2]
        assert ((positions >= 0) == mask).all()
        assert (x[~mask] == 0).all()
        real = positions.masked_fill(~mask, -1)
        assert (real[:, 1:][mask[:, 1:]] > real[:, :-1][mask[:, 1:]]).all()  # original order
        h = self.lin(x) * mask.unsqueeze(-1)
        return h.cumsum(1) / mask.cumsum(1).clamp(min=1).unsqueeze(-1)


# bad input

@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"x": torch.randn(2, 4, 3, D)}, ValueError, r"x must have shape \[B, L, 8\], got \(2, 4, 3, 8\)"),
        ({"x": torch.randn(D)}, ValueError, r"x must have shape \[B, L, 8\], got \(8,\)"),
        ({"x": torch.randn(2, 4, D + 1)}, ValueError, r"x must have shape \[B, L, 8\], got \(2, 4, 9\)"),
        ({"x": torch.ones(2, 4, D, dtype=torch.long)}, TypeError, r"x must be a floating tensor, got dtype torch.int64"),
        ({"x": "tokens"}, TypeError, r"x must be a Tensor of shape \[B, L, 8\], got str"),
        ({"x": torch.randn(2, 4, D), "mask": torch.ones(4, 2, dtype=torch.bool)}, ValueError,
         r"mask must have shape \[B, L\] = \(2, 4\), got \(4, 2\)"),
        ({"x": torch.randn(2, 4, D), "mask": torch.ones(2, 4, 1, dtype=torch.bool)}, ValueError,
         r"mask must have shape \[B, L\] = \(2, 4\), got \(2, 4, 1\)"),
        ({"x": torch.randn(2, 4, D), "mask": torch.ones(2, 4, dtype=torch.long)}, TypeError,
         r"mask must be a bool tensor .*got dtype torch.int64"),
        ({"x": torch.randn(2, 4, D), "mask": [[True] * 4] * 2}, TypeError, r"mask must be a bool Tensor"),
        ({"x": torch.randn(2, 4, D), "route_on": torch.randn(2, 4, D + 2)}, ValueError,
         r"route_on must have shape \[B, L, 8\], got \(2, 4, 10\)"),
        ({"x": torch.randn(2, 4, D), "route_on": torch.randn(2, 3, D)}, ValueError,
         r"route_on must have shape \[B, L, D_r\] with \[B, L\] = \(2, 4\), got \(2, 3, 8\)"),
        ({"x": torch.randn(2, 4, D), "context": torch.randn(2, 5, D)}, ValueError,
         r"context must have shape \[B, L, \.\.\.\] with \[B, L\] = \(2, 4\), got \(2, 5, 8\)"),
    ],
    ids=["rank4", "rank1", "features", "int-x", "not-tensor", "mask-transposed", "mask-rank3", "mask-int",
         "mask-list", "route-on-features", "route-on-length", "extra-length"],
)
def test_bad_input_names_argument_expected_and_actual(kwargs, error, match):
    with pytest.raises(error, match=match):
        sma(linear(), dim=D)(**kwargs)


@pytest.mark.parametrize("layout", ["padded", "flat"])
def test_empty_batch_gives_empty_output_and_zero_gradients(layout):
    layer = sma(linear(), dim=D, layout=layout)
    x = torch.randn(0, 4, D, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 4, D)
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("capacity", [0, 0.0, -0.5, 1.0001, 2, float("nan"), float("inf"), True, "0.5", None])
def test_topk_capacity_outside_unit_interval(capacity):
    if capacity is None:  # None means the default (0.25) in sma(); only the router rejects it
        with pytest.raises(ValueError, match=r"capacity must be a fraction in \(0, 1\], got None"):
            TopKRouter(D, capacity=None)
        return
    with pytest.raises(ValueError, match=r"capacity must be a fraction in \(0, 1\], got"):
        sma(linear(), dim=D, router="topk", capacity=capacity)


@pytest.mark.parametrize("capacity", [1e-9, 0.5, 1, 1.0])
def test_topk_capacity_inside_unit_interval(capacity):
    layer = sma(linear(), dim=D, router="topk", capacity=capacity)
    assert layer(torch.randn(2, 6, D)).shape == (2, 6, D)
    assert layer.stats.counts.tolist() == [[math.ceil(capacity * 6 - 1e-9) or 1] * 2]


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "4"])
def test_bad_compaction_capacity(value):
    with pytest.raises(ValueError, match=rf"compaction_capacity must be a fraction of the row in \(0, 1\], got {value!r}"):
        sma(linear(), dim=D, compaction_capacity=value)


@pytest.mark.parametrize("value", [0, -1, 2.0, True, "4"])
def test_bad_compaction_slots(value):
    with pytest.raises(ValueError, match=rf"compaction_slots must be a positive int \(slots per row\), got {value!r}"):
        sma(linear(), dim=D, compaction_slots=value)


def test_bad_options():
    with pytest.raises(ValueError, match="capacity applies to router='topk'"):
        sma(linear(), dim=D, capacity=0.5)
    with pytest.raises(ValueError, match="layout must be"):
        sma(linear(), dim=D, layout="ragged")
    with pytest.raises(ValueError, match="backend must be"):
        sma(linear(), dim=D, backend="cuda")(torch.randn(1, 2, D))


# NaN / inf router input: documented behaviour, no error

@pytest.mark.parametrize("router", ["threshold", "topk"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_router_input_is_never_routed(router, bad):
    torch.manual_seed(0)
    kwargs = {"capacity": 0.5} if router == "topk" else {}
    layer = sma(SeqModule(D), dim=D, router=router, **kwargs)
    if router == "threshold":
        with torch.no_grad():
            layer.router.proj.bias[1] += 10.0  # route (almost) everything that is finite
    x = torch.randn(2, 9, D)
    x[0, 3] = bad
    x[1, 0, 2] = bad
    x[1, 0, 5] = -bad
    y, routing = layer(x, return_routing=True)
    assert not routing.active[0, 0, 3] and not routing.active[0, 1, 0]
    assert routing.gate[0, 0, 3] == 0 and routing.gate[0, 1, 0] == 0
    assert (y[0, 3] == 0).all() and (y[1, 0] == 0).all()
    assert torch.isfinite(y).all()  # the bad tokens did not spread through the cumulative module
    assert routing.active[0].sum() >= (6 if router == "threshold" else 8)  # the others still route


# edge shapes

@pytest.mark.parametrize("router", ["threshold", "topk"])
@pytest.mark.parametrize("layout", ["padded", "flat"])
@pytest.mark.parametrize("B,L", [(2, 0), (1, 1), (1, 7), (3, 1)], ids=lambda v: str(v))
def test_edge_shapes(router, layout, B, L):
    layer = sma(linear(), dim=D, router=router, layout=layout)
    x = torch.randn(B, L, D, requires_grad=True)
    y = layer(x, mask=torch.ones(B, L, dtype=torch.bool))
    assert y.shape == (B, L, D)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert all(p.grad is not None for p in layer.parameters())


def test_batch_size_zero_in_flat_layout():
    layer = sma(linear(), dim=D, layout="flat")
    assert layer(torch.randn(0, 5, D)).shape == (0, 5, D)


def test_decoding_one_token_at_a_time_equals_full_forward():
    """L = 1 per call (cached decoding): the causal threshold router decides the same."""
    layer = sma(linear(), dim=D)
    x = torch.randn(2, 11, D)
    full = layer(x)
    steps = torch.cat([layer(x[:, t:t + 1]) for t in range(11)], 1)
    torch.testing.assert_close(steps, full)


# fuzzing

@st.composite
def cases(draw):
    B = draw(st.integers(1, 3))
    L = draw(st.integers(0, 9))
    dim = draw(st.integers(1, 5))
    bits = draw(st.lists(st.booleans(), min_size=B * L, max_size=B * L))
    mask = torch.tensor(bits, dtype=torch.bool).reshape(B, L) if draw(st.booleans()) else None
    router = draw(st.sampled_from(["threshold", "topk"]))
    layout = draw(st.sampled_from(["padded", "flat"]))
    sequence = layout == "padded" and draw(st.booleans())
    capacity = draw(st.floats(0.05, 1.0)) if router == "topk" else None
    slots = draw(st.one_of(st.none(), st.integers(1, max(L, 1)))) if router == "threshold" else None
    seed = draw(st.integers(0, 2**16))
    return B, L, dim, mask, router, layout, sequence, capacity, slots, seed


@settings(max_examples=60, deadline=None)
@given(cases())
def test_fuzz_sma_shapes_and_masks(case):
    B, L, dim, mask, router, layout, sequence, capacity, slots, seed = case
    torch.manual_seed(seed)
    module = SeqModule(dim) if sequence else nn.Linear(dim, dim)
    options = {"capacity": capacity} if router == "topk" else {"compaction_slots": slots}
    layer = sma(module, dim=dim, router=router, layout=layout, **options)
    with torch.no_grad():
        layer.router.proj.bias.normal_(std=2.0)  # vary the routed fraction
    x = torch.randn(B, L, dim, requires_grad=True)
    y, routing = layer(x, mask=mask, return_routing=True)

    assert y.shape == (B, L, dim)
    active = routing.active[0]
    if mask is not None:
        assert not active[~mask].any()  # padding never routes
    kept = active
    if slots is not None:  # a fixed number of slots drops a row's overflow
        kept = active & (active.cumsum(1) <= slots)
    if router == "topk":
        k = routing.slots
        real = torch.full((B,), L) if mask is None else mask.sum(1)
        assert active.sum(1).tolist() == real.clamp(max=k).tolist()
    assert (y[~kept] == 0).all()
    assert layer.stats.counts.tolist() == [kept.sum(1).tolist()]  # tokens that got a slot
    if not sequence:  # pointwise: gate * f(x) at every kept token
        want = routing.gate[0].unsqueeze(-1) * module(x)
        torch.testing.assert_close(y[kept], want[kept])
    y.pow(2).sum().backward()
    assert (x.grad[~kept] == 0).all()  # a skipped token gets no gradient through the branch
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
