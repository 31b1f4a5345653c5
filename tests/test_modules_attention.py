"""LocalGatedAttention: windowed blocks vs a dense reference, masks, positions, decoding."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smakit import sma
from smakit.modules import LocalGatedAttention, local_attention
from smakit.modules.position import apply_rotary, relative_bucket

BIASES = ["buckets", "fourier", False]


def project_reference(gau, x, positions):
    """``u, v, q, k`` from the weights as the docstring writes them (no bias features)."""
    E, S = gau.value_dim, gau.qk_dim
    u, v, z = torch.nn.functional.silu(gau.proj(x)).split([E, E, S], dim=-1)
    q, k = (z * gau.qk_scale[i] + gau.qk_offset[i] for i in (0, 1))
    if gau.inv_freq is not None:
        q, k = apply_rotary(q, positions, gau.inv_freq), apply_rotary(k, positions, gau.inv_freq)
    return u, v, q, k


def make_gau(*args, relative_bias="buckets", **kwargs):
    """A GAU whose bias is not zero (the Fourier amplitudes start at zero)."""
    gau = LocalGatedAttention(*args, relative_bias=relative_bias, **kwargs)
    if gau.bias is not None:
        torch.nn.init.normal_(gau.bias.weight, 0.0, 0.5)
    return gau


def dense_reference(gau, x, mask, positions):
    """O(K^2) attention with the exact window written as a full mask and the bias read per pair."""
    B, K, _ = x.shape
    u, v, q, k = project_reference(gau, x, positions)
    s = q @ k.transpose(1, 2) / math.sqrt(gau.qk_dim)
    if gau.bias is not None:
        s = s + gau.bias(positions[:, :, None] - positions[:, None, :]).to(s.dtype)
    i = torch.arange(K)
    d = i[None, :] - i[:, None]  # key slot - query slot
    if gau.chunked:
        allowed = (i[None, :] // gau.window) == (i[:, None] // gau.window)
        if gau.causal:
            allowed &= d <= 0
    elif gau.causal:
        allowed = (d <= 0) & (d > -gau.window)
    else:
        allowed = d.abs() <= gau.window
    valid = allowed & mask[:, None, :]
    if gau.attention == "softmax":
        w = s.masked_fill(~valid, -1e30).softmax(-1) * valid
    else:
        w = torch.relu(s).square().masked_fill(~valid, 0) / gau.window
    return gau.out(u * (w @ v))


CASES = [(c, a, ch) for c in (True, False) for a in ("softmax", "relu2") for ch in (False, True)]


@pytest.mark.parametrize("causal,attention,chunked", CASES,
                         ids=[f"causal{c}-{a}-chunked{ch}" for c, a, ch in CASES])
@pytest.mark.parametrize("K,window", [(1, 4), (13, 4), (16, 4), (9, 16)], ids=lambda v: str(v))
@pytest.mark.parametrize("bias", BIASES)
def test_matches_dense_reference(causal, attention, chunked, K, window, bias):
    torch.manual_seed(K * window)
    gau = make_gau(12, window, 8, causal=causal, attention=attention, chunked=chunked, relative_bias=bias).double()
    x = torch.randn(3, K, 12, dtype=torch.float64)
    counts = torch.tensor([K, max(K - 3, 0), 1])
    mask = torch.arange(K) < counts[:, None]
    x = x * mask[..., None]
    positions = torch.where(mask, torch.arange(K) * 3 + 1, -1)  # sparse original positions
    y = gau(x, mask=mask, positions=positions)
    ref = dense_reference(gau, x, mask, positions)
    torch.testing.assert_close(y[mask], ref[mask], rtol=1e-10, atol=1e-10)
    assert torch.isfinite(y).all()


@settings(max_examples=25, deadline=None)
@given(K=st.integers(1, 20), window=st.integers(1, 6), causal=st.booleans(), seed=st.integers(0, 2**16))
def test_padding_never_influences_real_slots(K, window, causal, seed):
    g = torch.Generator().manual_seed(seed)
    gau = LocalGatedAttention(8, window, 4, causal=causal)
    count = int(torch.randint(0, K + 1, (1,), generator=g))
    mask = (torch.arange(K) < count)[None]
    x = torch.randn(1, K, 8, generator=g)
    y1 = gau(x, mask=mask)
    x2 = torch.where(mask[..., None], x, 1e4 * torch.randn(1, K, 8, generator=g))
    y2 = gau(x2, mask=mask)
    assert torch.isfinite(y2).all()
    torch.testing.assert_close(y1[mask], y2[mask])


def test_query_without_keys_gives_zero_not_nan():
    gau = LocalGatedAttention(8, 4, 4)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    x = torch.randn(2, 5, 8, requires_grad=True)
    out, _ = local_attention(*(torch.randn(2, 5, 4) for _ in range(2)), torch.randn(2, 5, 6), 4,
                             causal=True, mask=mask)
    assert (out == 0).all()
    y = gau(x, mask=mask)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


def test_relative_position_uses_original_positions():
    torch.manual_seed(0)
    gau = LocalGatedAttention(8, 4, 4)
    x = torch.randn(1, 6, 8)
    near = torch.arange(6)[None]
    far = near * 100
    assert not torch.allclose(gau(x, positions=near), gau(x, positions=far))
    # shifting every position by the same amount changes nothing (relative information only)
    torch.testing.assert_close(gau(x, positions=far + 7), gau(x, positions=far), rtol=1e-4, atol=1e-5)


def test_span_statistic():
    gau = LocalGatedAttention(8, window=3, qk_dim=4)
    positions = (torch.arange(10) * 5)[None]
    gau(torch.randn(1, 10, 8), positions=positions)
    # slots 0,1,2 see 1,2,3 keys; the rest see 3 keys spanning 2 * 5 + 1 positions
    expected = (1 + 6 + 11 + 7 * 11) / 10
    assert math.isclose(gau.span.item(), expected, rel_tol=1e-6)


@pytest.mark.parametrize("attention", ["softmax", "relu2"])
@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("bias", BIASES)
def test_step_with_skips_equals_forward_on_routed_tokens(attention, chunked, bias):
    torch.manual_seed(3)
    gau = make_gau(10, 4, 6, attention=attention, chunked=chunked, relative_bias=bias).double()
    L = 23
    x = torch.randn(2, L, 10, dtype=torch.float64)
    active = torch.rand(2, L) < 0.6
    cache = gau.init_cache(2, dtype=torch.float64)
    outs = []
    for t in range(L):
        o, cache = gau.step(x[:, t], torch.full((2,), t), cache, update=active[:, t])
        outs.append(o)
    outs = torch.stack(outs, 1)
    for b in range(2):
        pos = active[b].nonzero().squeeze(1)
        ref = gau(x[b:b + 1, pos], positions=pos[None])[0]
        torch.testing.assert_close(outs[b, pos], ref, rtol=1e-10, atol=1e-10)


def test_behind_sma_and_gradients():
    torch.manual_seed(4)
    layer = sma(LocalGatedAttention(8, 3, 4), dim=8)
    x = torch.randn(2, 11, 8, requires_grad=True)
    mask = torch.arange(11) < torch.tensor([[11], [6]])
    y = layer(x, mask=mask)
    assert (y[1, 6:] == 0).all()
    y.square().sum().backward()
    assert layer.router.proj.weight.grad.abs().sum() > 0
    assert layer.module.proj.weight.grad.abs().sum() > 0


def test_relative_bucket_monotone_and_bounded():
    d = torch.arange(0, 5000)
    b = relative_bucket(d, 32, 1024, bidirectional=False)
    assert (b.diff() >= 0).all() and b.min() == 0 and b.max() == 31
    bb = relative_bucket(torch.arange(-5000, 5000), 32, 1024, bidirectional=True)
    assert bb.min() == 0 and bb.max() == 31


def test_bad_arguments():
    with pytest.raises(ValueError):
        LocalGatedAttention(8, 4, 4, attention="linear")
    with pytest.raises(ValueError):
        LocalGatedAttention(8, 0, 4)
    with pytest.raises(RuntimeError):
        LocalGatedAttention(8, 4, 4, causal=False).init_cache(1)
    with pytest.raises(ValueError, match="relative_bias must be"):
        LocalGatedAttention(8, 4, 4, relative_bias="alibi")


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("attention", ["softmax", "relu2"])
@pytest.mark.parametrize("bias", BIASES)
def test_gradients_match_dense_reference(causal, attention, bias):
    torch.manual_seed(7)
    gau = make_gau(8, 3, 4, causal=causal, attention=attention, relative_bias=bias).double()
    mask = torch.arange(10) < torch.tensor([[10], [7]])
    positions = torch.where(mask, torch.arange(10) * 2, -1)
    x = (torch.randn(2, 10, 8, dtype=torch.float64) * mask[..., None]).requires_grad_(True)
    w = torch.randn(2, 10, 8, dtype=torch.float64) * mask[..., None]
    grads = []
    for fn in (lambda: gau(x, mask=mask, positions=positions), lambda: dense_reference(gau, x, mask, positions)):
        gau.zero_grad()
        x.grad = None
        (fn() * w).sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in gau.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
