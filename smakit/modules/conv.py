"""Depthwise 1D convolution over the sequence, causal or centred."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import zero_padding


class CausalConv(nn.Module):
    """Depthwise convolution along the sequence, causal (left-padded) or centred.

    Behind :func:`smakit.sma` it convolves over the routed tokens in their order; padding
    slots are zeroed first, so they act as the zero padding of a shorter sequence.

    Args:
        dim (int): channels ``D``.
        kernel_size (int): taps. Default: 4.
        causal (bool): only past and current tokens (left padding); otherwise centred
            (``kernel_size`` must then be odd). Default: ``True``.
        bias (bool): per-channel bias. Default: ``True``.

    Shape:
        - x: ``[B, L, D]``; mask: ``[B, L]`` bool (True = real token)
        - output: ``[B, L, D]``

    Examples::

        >>> conv = CausalConv(8, kernel_size=3)
        >>> conv(torch.randn(2, 10, 8)).shape
        torch.Size([2, 10, 8])
    """

    def __init__(self, dim: int, kernel_size: int = 4, causal: bool = True, bias: bool = True):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive int, got {kernel_size!r}")
        if not causal and kernel_size % 2 == 0:
            raise ValueError(f"a centred convolution needs an odd kernel_size, got {kernel_size}")
        self.dim, self.kernel_size, self.causal = dim, kernel_size, causal
        self.weight = nn.Parameter(torch.empty(dim, 1, kernel_size))
        self.bias = nn.Parameter(torch.empty(dim)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = self.kernel_size ** -0.5
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = zero_padding(x, mask).transpose(1, 2)  # [B, D, L]
        k = self.kernel_size
        pad = (k - 1, 0) if self.causal else ((k - 1) // 2, (k - 1) // 2)
        y = F.conv1d(F.pad(x, pad), self.weight, self.bias, groups=self.dim)
        return y.transpose(1, 2)

    def init_state(self, batch_size: int, device=None, dtype=None) -> Tensor:
        """Zero state ``[B, D, kernel_size - 1]`` of past inputs (causal only)."""
        w = self.weight
        return torch.zeros(batch_size, self.dim, self.kernel_size - 1,
                           device=device or w.device, dtype=dtype or w.dtype)

    def final_state(self, x: Tensor) -> Tensor:
        """State ``[B, D, kernel_size - 1]`` after reading ``x [B, L, D]`` (its last
        ``kernel_size - 1`` tokens, zeros before the start); equals stepping through ``x``."""
        if not self.causal:
            raise RuntimeError("final_state() needs a causal convolution")
        k1 = self.kernel_size - 1
        tail = x[:, max(x.shape[1] - k1, 0):].transpose(1, 2)  # [B, D, <= k - 1]
        return F.pad(tail, (k1 - tail.shape[-1], 0))

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One token: ``x [B, D]``, ``state [B, D, k - 1]`` -> ``(y [B, D], state)``."""
        if not self.causal:
            raise RuntimeError("step() needs a causal convolution")
        window = torch.cat((state, x.unsqueeze(-1)), dim=-1)  # [B, D, k]
        y = (window * self.weight.squeeze(1)).sum(-1)
        if self.bias is not None:
            y = y + self.bias
        return y, window[..., 1:]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kernel_size={self.kernel_size}, causal={self.causal}"
