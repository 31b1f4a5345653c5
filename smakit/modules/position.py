"""Position information by original token positions: rotary embedding and a relative bias.

Both take integer positions rather than slot indices, so a module running on a compacted
sequence (whose neighbours may be far apart in the original sequence) still knows the true
distance between tokens.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def apply_rotary(x: Tensor, positions: Tensor, inv_freq: Tensor) -> Tensor:
    """Rotate ``x [..., S]`` by angles ``positions[..., None] * inv_freq`` (half-split layout).

    Args:
        x (Tensor): ``[..., S]`` features, ``S`` even.
        positions (Tensor): ``[...]`` integer (or float) positions, broadcastable to ``x[..., 0]``.
        inv_freq (Tensor): ``[S // 2]`` frequencies.
    """
    angle = positions.unsqueeze(-1).to(torch.float32) * inv_freq.to(torch.float32)  # [..., S/2]
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def rotary_frequencies(dim: int, base: float = 10000.0) -> Tensor:
    """``[dim // 2]`` rotary frequencies ``base ** (-2i / dim)``."""
    return base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)


def relative_bucket(distance: Tensor, num_buckets: int, max_distance: int, bidirectional: bool) -> Tensor:
    """Map signed distances ``pos_q - pos_k`` to buckets in ``[0, num_buckets)``.

    Distances below ``num_buckets // 2`` (per sign when bidirectional) get their own bucket;
    larger ones share logarithmically wider buckets up to ``max_distance``, beyond which they
    are clipped into the last bucket. Causal use sees only ``distance >= 0``; negative
    distances are clipped to 0 there.
    """
    if bidirectional:
        half = num_buckets // 2
        offset = torch.where(distance < 0, half, 0)
        n = distance.abs()
    else:
        half = num_buckets
        offset = torch.zeros_like(distance)
        n = distance.clamp(min=0)
    exact = max(half // 2, 1)
    far = n.float().clamp(min=1).div(exact).log() / math.log(max(max_distance / exact, 1.0 + 1e-6))
    far = (exact + (far * (half - exact)).long()).clamp(max=half - 1)
    return offset + torch.where(n < exact, n, far)


class RelativePositionBias(nn.Module):
    """Learned scalar bias indexed by the log-bucketed original-position distance.

    Args:
        num_buckets (int): number of buckets (split between signs when bidirectional).
            Default: 32.
        max_distance (int): distance at which the buckets stop growing. Default: 1024.
        bidirectional (bool): separate buckets for keys after the query. Default: ``False``.

    Shape:
        - distance: any shape of int64 ``pos_q - pos_k``
        - output: the same shape, float

    Examples::

        >>> bias = RelativePositionBias(16, 128)
        >>> bias(torch.tensor([0, 1, 100, 5000])).shape
        torch.Size([4])
    """

    def __init__(self, num_buckets: int = 32, max_distance: int = 1024, bidirectional: bool = False):
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.weight = nn.Parameter(torch.empty(num_buckets))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, 0.0, 0.02)

    def forward(self, distance: Tensor) -> Tensor:
        with torch.no_grad():
            bucket = relative_bucket(distance, self.num_buckets, self.max_distance, self.bidirectional)
        return self.weight[bucket.int()]  # int32 index: half the memory kept for backward

    def extra_repr(self) -> str:
        return f"num_buckets={self.num_buckets}, max_distance={self.max_distance}, bidirectional={self.bidirectional}"
