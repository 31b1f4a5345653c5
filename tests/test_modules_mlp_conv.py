"""MLP and CausalConv, alone and behind sma()."""

import pytest
import torch

from smakit import sma
from smakit.modules import MLP, CausalConv


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_mlp_shapes_and_sma(activation):
    mlp = MLP(8, 16, activation=activation)
    x = torch.randn(2, 7, 8)
    assert mlp(x).shape == (2, 7, 8)
    for layout in ("flat", "padded"):
        layer = sma(mlp, dim=8, layout=layout)
        y = layer(x)
        active = layer.stats.active[0]
        torch.testing.assert_close(y[active], (mlp(x) * layer.stats.gate[0].unsqueeze(-1))[active])
        assert (y[~active] == 0).all()


def test_conv_causal_no_leak_and_step():
    conv = CausalConv(4, kernel_size=3)
    x = torch.randn(2, 9, 4, requires_grad=True)
    y = conv(x)
    y[:, 4].sum().backward()
    assert x.grad[:, 5:].abs().max() == 0
    state = conv.init_state(2)
    outs = []
    for t in range(9):
        o, state = conv.step(x[:, t], state)
        outs.append(o)
    torch.testing.assert_close(torch.stack(outs, 1), y)


def test_conv_centred_and_mask():
    conv = CausalConv(4, kernel_size=3, causal=False)
    x = torch.randn(1, 6, 4)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    y = conv(x, mask)
    torch.testing.assert_close(y[:, :4], conv(x[:, :4])[:, :4])
    with pytest.raises(ValueError):
        CausalConv(4, kernel_size=4, causal=False)


@pytest.mark.parametrize("bad", [0, -2, 2.0, True, "3"])
def test_conv_rejects_a_kernel_size_that_is_not_a_positive_int(bad):
    with pytest.raises(ValueError, match="kernel_size must be a positive int"):
        CausalConv(4, kernel_size=bad)


def test_conv_rejects_a_bad_dim():
    with pytest.raises(ValueError, match="dim must be a positive int"):
        CausalConv(0)


def test_conv_behind_sma():
    torch.manual_seed(0)
    conv = CausalConv(4, kernel_size=2)
    layer = sma(conv, dim=4)
    x = torch.randn(2, 16, 4)
    y = layer(x)
    active = layer.stats.active[0]
    assert active.any(-1).all()
    for b in range(2):  # each row: convolution over its routed tokens, in order
        idx = active[b].nonzero().squeeze(1)
        ref = conv(x[b:b + 1, idx])[0] * layer.stats.gate[0, b, idx].unsqueeze(-1)
        torch.testing.assert_close(y[b, idx], ref)
