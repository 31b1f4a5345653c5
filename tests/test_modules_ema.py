"""MultiHeadEMA: FFT convolution vs recurrence vs a direct reference; masks; gradients."""

import pytest
import torch

from smakit.modules import MultiHeadEMA, fft_causal_conv


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()


def naive_ema(ema, x):
    """Direct O(L^2) evaluation of y_t = sum_j k[t - j] x_j (+ reverse) + omega x_t."""
    B, L, D = x.shape
    k = ema.kernel(L)
    lag = torch.arange(L)[:, None] - torch.arange(L)[None, :]  # t - j
    kf = k[:D] if ema.bidirectional else k
    toeplitz = torch.where(lag >= 0, kf[:, lag.clamp(min=0)], 0.0)  # [D, L, L]
    y = torch.einsum("dtj,bjd->btd", toeplitz, x)
    if ema.bidirectional:
        kb = k[D:]
        toeplitz = torch.where(lag <= 0, kb[:, (-lag).clamp(min=0)], 0.0)
        y = y + torch.einsum("dtj,bjd->btd", toeplitz, x)
    return y + x * ema.omega


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidir"])
@pytest.mark.parametrize("L", [1, 7, 33])
def test_fft_matches_direct(bidirectional, L):
    torch.manual_seed(L)
    ema = MultiHeadEMA(6, ndim=3, bidirectional=bidirectional).double()
    x = torch.randn(2, L, 6, dtype=torch.float64)
    assert rel_err(ema(x), naive_ema(ema, x)) < 1e-10


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("L", [1, 5, 64, 129])
def test_step_equals_convolution(dtype, tol, L):
    torch.manual_seed(0)
    ema = MultiHeadEMA(8, ndim=4).to(dtype)
    x = torch.randn(3, L, 8, dtype=dtype)
    y = ema(x)
    state = ema.init_state(3, dtype=dtype)
    out = []
    for t in range(L):
        o, state = ema.step(x[:, t], state)
        out.append(o)
    assert state.shape == (3, 8, 4)
    assert rel_err(torch.stack(out, 1), y) < tol


def test_truncation_matches_prefix():
    torch.manual_seed(1)
    full, trunc = MultiHeadEMA(4, ndim=2), MultiHeadEMA(4, ndim=2, truncation=5)
    trunc.load_state_dict(full.state_dict())
    x = torch.randn(1, 20, 4)
    torch.testing.assert_close(trunc(x)[:, :5], full(x)[:, :5], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(trunc(x)[:, 10:], full(x)[:, 10:])


def test_causal_no_future_leak():
    # the FFT convolution is causal up to round-off (~eps), so check in float64
    ema = MultiHeadEMA(4, ndim=2).double()
    x = torch.randn(2, 16, 4, dtype=torch.float64, requires_grad=True)
    ema(x)[:, 7].sum().backward()
    assert x.grad[:, 8:].abs().max() < 1e-12 * x.grad[:, :8].abs().max()
    x2 = x.detach().clone()
    x2[:, 8:] += 100.0
    torch.testing.assert_close(ema(x2)[:, :8], ema(x.detach())[:, :8], rtol=1e-12, atol=1e-12)


def test_bidirectional_padding_is_ignored():
    torch.manual_seed(2)
    ema = MultiHeadEMA(4, ndim=2, bidirectional=True)
    x = torch.randn(2, 12, 4)
    mask = torch.arange(12) < torch.tensor([[12], [7]])
    y = ema(x, mask)
    x2 = x.clone()
    x2[1, 7:] = 1e3
    torch.testing.assert_close(ema(x2, mask)[1, :7], y[1, :7])
    torch.testing.assert_close(ema(x[1:, :7])[0], y[1, :7], rtol=1e-5, atol=1e-5)


def test_gradients_reach_all_parameters():
    ema = MultiHeadEMA(4, ndim=2, bidirectional=True)
    ema(torch.randn(2, 9, 4)).square().sum().backward()
    for name, p in ema.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_fft_conv_shapes():
    y = fft_causal_conv(torch.randn(2, 3, 10), torch.randn(3, 4))
    assert y.shape == (2, 3, 10)
