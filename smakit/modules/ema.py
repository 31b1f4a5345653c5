"""Multi-dimensional damped exponential moving average (Mega-style EMA).

Each of the ``D`` channels is expanded into ``N = ndim`` scalar states, each a damped EMA::

    h_t[n] = q[n] * h_{t-1}[n] + p[n] * beta[n] * x_t        (p = sigmoid(delta),
    y_t    = scale * sum_n gamma[n] * h_t[n] + omega * x_t     q = 1 - p * sigmoid(alpha))

Unrolled, ``y = k * x + omega * x`` with the kernel ``k[l] = scale * sum_n gamma beta p q^l``,
which the training path applies as an FFT long convolution in ``O(L log L)``. The
recurrence is what :meth:`MultiHeadEMA.step` runs for decoding, with an explicit state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._utils import default, exists, zero_padding


def fft_causal_conv(x: Tensor, k: Tensor) -> Tensor:
    """Causal long convolution ``y_t = sum_{j <= t} k[t - j] x_j`` by FFT.

    Args:
        x (Tensor): ``[..., D, L]`` signal.
        k (Tensor): ``[D, Lk]`` kernel, ``Lk <= L`` (zero beyond).

    Returns:
        Tensor ``[..., D, L]`` in ``x``'s dtype (computed in at least float32).
    """
    L = x.shape[-1]
    n = 2 * L
    dtype = torch.promote_types(x.dtype, torch.float32)
    xf = torch.fft.rfft(x.to(dtype), n=n)
    kf = torch.fft.rfft(k.to(dtype), n=n)
    return torch.fft.irfft(xf * kf, n=n)[..., :L].to(x.dtype)



def fft_two_sided_conv(x: Tensor, k_fwd: Tensor, k_bwd: Tensor) -> Tensor:
    """``y_t = sum_{j <= t} k_fwd[t - j] x_j + sum_{j >= t} k_bwd[j - t] x_j`` in one FFT.

    Equals ``fft_causal_conv(x, k_fwd) + fft_causal_conv(x.flip(-1), k_bwd).flip(-1)``
    (the reference) with half the transforms: both kernels go into one circular kernel of
    length ``2L`` (``k_fwd`` at lags ``0..``, ``k_bwd`` wrapped to lags ``..-1``).

    Args:
        x (Tensor): ``[..., D, L]`` signal.
        k_fwd, k_bwd (Tensor): ``[D, Lk]`` kernels, ``Lk <= L``.

    Returns:
        Tensor ``[..., D, L]`` in ``x``'s dtype (computed in at least float32).
    """
    L, Lk = x.shape[-1], k_fwd.shape[-1]
    n = 2 * L
    dtype = torch.promote_types(x.dtype, torch.float32)
    k_fwd, k_bwd = k_fwd.to(dtype), k_bwd.to(dtype)
    gap = k_fwd.new_zeros(k_fwd.shape[0], n - 2 * Lk + 1)
    c = torch.cat((k_fwd[:, :1] + k_bwd[:, :1], k_fwd[:, 1:], gap, k_bwd[:, 1:].flip(-1)), dim=-1)  # [D, n]
    xf = torch.fft.rfft(x.to(dtype), n=n)
    return torch.fft.irfft(xf * torch.fft.rfft(c, n=n), n=n)[..., :L].to(x.dtype)

class MultiHeadEMA(nn.Module):
    """Mega-style multi-dimensional damped EMA over ``[B, L, D]`` sequences.

    Causal mode runs one EMA per channel left to right; bidirectional mode adds a second,
    independently parameterised EMA running right to left (both include the current token).

    Args:
        dim (int): number of channels ``D``.
        ndim (int): state dimensions ``N`` per channel. Default: 16.
        bidirectional (bool): add the right-to-left EMA. Default: ``False``.
        truncation (int, optional): keep only the first ``truncation`` kernel taps (the
            convolution then no longer equals the unbounded recurrence of :meth:`step`
            beyond that lag). Default: ``None`` (full length).

    Shape:
        - x: ``[B, L, D]``, mask: ``[B, L]`` bool (True = real token; padding is zeroed
          before mixing, so it never influences real tokens)
        - output: ``[B, L, D]``

    Examples::

        >>> ema = MultiHeadEMA(8, ndim=4)
        >>> x = torch.randn(2, 10, 8)
        >>> y = ema(x)
        >>> state = ema.init_state(2)
        >>> y0, state = ema.step(x[:, 0], state)
        >>> torch.allclose(y0, y[:, 0], atol=1e-5)
        True
    """

    def __init__(self, dim: int, ndim: int = 16, bidirectional: bool = False, truncation: int | None = None):
        super().__init__()
        if exists(truncation) and truncation < 1:
            raise ValueError(f"truncation must be a positive int, got {truncation}")
        self.dim, self.ndim = dim, ndim
        self.bidirectional, self.truncation = bidirectional, truncation
        ch = 2 * dim if bidirectional else dim
        self.scale = math.sqrt(1.0 / ndim)
        self.delta = nn.Parameter(torch.empty(ch, ndim))
        self.alpha = nn.Parameter(torch.empty(ch, ndim))
        self.beta = nn.Parameter(torch.empty(ch, ndim))
        self.gamma = nn.Parameter(torch.empty(ch, ndim))
        self.omega = nn.Parameter(torch.empty(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.delta, 0.0, 0.2)
            nn.init.normal_(self.alpha, 0.0, 0.2)
            # alternating-sign expansion vector, as in Mega
            sign = torch.ones(self.ndim)
            sign[1::2] = -1.0
            self.beta.copy_(sign + 0.02 * torch.randn_like(self.beta))
            nn.init.normal_(self.gamma, 0.0, 1.0)
            nn.init.normal_(self.omega, 0.0, 1.0)

    def _coefficients(self) -> tuple[Tensor, Tensor]:
        """``(b, q)`` each ``[C, N]``: input weight ``p * beta`` and decay ``q``."""
        p = torch.sigmoid(self.delta)
        q = 1.0 - p * torch.sigmoid(self.alpha)
        return p * self.beta, q

    def kernel(self, length: int) -> Tensor:
        """The convolution kernel ``[C, length]`` (``C = 2D`` when bidirectional).

        ``k[mR + r] = sum_n (w_n q_n^{mR}) q_n^r`` with ``R = ceil(sqrt(length))``: a batched
        matmul of two small power tables, so neither time nor saved memory is ``C * N * L``
        element-wise work (only ``C * N * 2 sqrt(L)`` powers are computed).
        """
        b, q = self._coefficients()
        if torch.compiler.is_compiling():  # lengths may be symbolic; any R is exact, a fixed one keeps shapes simple
            R = 64
        else:
            R = max(math.isqrt(max(length - 1, 0)) + 1, 1)
        M = -(-length // R)
        log_q = torch.log(q).unsqueeze(-1)  # [C, N, 1]
        inner = torch.exp(log_q * torch.arange(R, device=q.device, dtype=q.dtype))  # [C, N, R]
        outer = torch.exp(log_q * torch.arange(0, M * R, R, device=q.device, dtype=q.dtype))  # [C, N, M]
        outer = outer * (b * self.gamma * self.scale).unsqueeze(-1)
        k = torch.bmm(outer.transpose(1, 2), inner)  # [C, M, R]
        return k.reshape(k.shape[0], M * R)[:, :length]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape [B, L, {self.dim}], got {tuple(x.shape)}")
        B, L, D = x.shape
        x = zero_padding(x, mask)
        k = self.kernel(min(L, default(self.truncation, L)))
        u = x.transpose(1, 2)  # [B, D, L]
        if self.bidirectional:
            y = fft_two_sided_conv(u, *k.chunk(2, dim=0))
        else:
            y = fft_causal_conv(u, k)
        # the skip term first, so the sum is laid out [B, L, D]: `y.transpose(1, 2) + ...` would keep
        # the conv's [B, D, L] memory, and every linear layer downstream would copy it again
        return (x * self.omega).add_(y.transpose(1, 2))

    # decoding
    def init_state(self, batch_size: int, device=None, dtype=None) -> Tensor:
        """Zero recurrent state ``[B, D, N]`` (causal mode only)."""
        device = default(device, self.delta.device)
        return torch.zeros(batch_size, self.dim, self.ndim, device=device, dtype=default(dtype, self.delta.dtype))

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One token of the recurrence: ``x [B, D]``, ``state [B, D, N]`` -> ``(y [B, D], state)``.

        Equals the convolution of :meth:`forward` (without ``truncation``) token by token.
        """
        if self.bidirectional:
            raise RuntimeError("step() needs a causal EMA (bidirectional=False)")
        b, q = self._coefficients()
        state = q * state + b * x.unsqueeze(-1)
        y = (state * self.gamma).sum(-1) * self.scale + x * self.omega
        return y, state

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, ndim={self.ndim}, bidirectional={self.bidirectional}, "
                f"truncation={self.truncation}")
