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
    return _rotate(x, *_rotary_cos_sin(positions, inv_freq, x.dtype))


def _rotary_cos_sin(positions: Tensor, inv_freq: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(cos, sin)`` each ``[..., S/2]``: computed once, shared by queries and keys."""
    angle = positions.unsqueeze(-1).to(torch.float32) * inv_freq.to(torch.float32)  # [..., S/2]
    return angle.cos().to(dtype), angle.sin().to(dtype)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
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

    The bucket of every distance in ``[-max_distance, max_distance]`` is tabulated once
    (larger distances share the edge buckets); bias values are read with ``index_select``
    from a small table, whose backward is an ``index_add`` into that table (indexing with
    ``weight[bucket]`` instead costs an accumulating ``index_put`` in backward, ~30x slower
    on CPU). :func:`relative_bias_ref` is the direct reference.

    Args:
        num_buckets (int): number of buckets (split between signs when bidirectional).
            Default: 32.
        max_distance (int): distance at which the buckets stop growing. Default: 1024.
        bidirectional (bool): separate buckets for keys after the query. Default: ``False``.

    Shape:
        - distance: any shape of integer ``pos_q - pos_k``
        - output: the same shape, float

    Examples::

        >>> bias = RelativePositionBias(16, 128)
        >>> bias(torch.tensor([0, 1, 100, 5000])).shape
        torch.Size([4])
        >>> q, k = torch.tensor([[3, 9]]), torch.tensor([[0, 3, 9]])
        >>> future = q[..., None] < k[..., None, :]
        >>> bias.masked(q[..., None], k[..., None, :], future, fill=-1e9).shape
        torch.Size([1, 2, 3])
        >>> bias.distance_table().shape        # bias of every distance -128 ... 128
        torch.Size([257])
    """

    def __init__(self, num_buckets: int = 32, max_distance: int = 1024, bidirectional: bool = False):
        super().__init__()
        if num_buckets < (2 if bidirectional else 1) or max_distance < 1:
            raise ValueError(f"num_buckets must be >= {2 if bidirectional else 1} and max_distance >= 1, "
                             f"got {num_buckets}, {max_distance}")
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.weight = nn.Parameter(torch.empty(num_buckets))
        table = relative_bucket(torch.arange(-max_distance, max_distance + 1), num_buckets, max_distance,
                                bidirectional)
        self.register_buffer("bucket_of", table.int(), persistent=False)  # [2M + 1], bucket of d = index - M
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, 0.0, 0.02)

    def bucket(self, distance: Tensor) -> Tensor:
        """int32 bucket of each integer distance (same shape)."""
        M = self.max_distance
        shifted = (distance + M).clamp_(0, 2 * M)  # distances beyond M share the edge bucket
        return self.bucket_of.index_select(0, shifted.flatten()).view(distance.shape)

    def lookup(self, bucket: Tensor) -> Tensor:
        """Bias of each bucket id (int32 or int64, any shape)."""
        return self.weight.index_select(0, bucket.flatten()).view(bucket.shape)

    def distance_table(self) -> Tensor:
        """``[2 * max_distance + 1]`` bias of each distance ``-max_distance ... max_distance``."""
        return self.weight.index_select(0, self.bucket_of)

    def masked(self, pos_q: Tensor, pos_k: Tensor, masked: Tensor, fill: float) -> Tensor:
        """Bias of ``pos_q - pos_k`` (broadcast), ``fill`` (no gradient) where ``masked`` is True.

        One gather per pair, straight from the clamped distance into a ``2 * max_distance + 2``
        entry table of bias values (the bucket table composed with the weights, then ``fill``).
        """
        M = self.max_distance
        idx = (pos_q + M - pos_k).clamp_(0, 2 * M).masked_fill_(masked, 2 * M + 1)
        extra = torch.full((1,), self.num_buckets, dtype=self.bucket_of.dtype, device=self.bucket_of.device)
        table = torch.cat((self.weight, self.weight.new_full((1,), fill)))
        table = table.index_select(0, torch.cat((self.bucket_of, extra)))  # [2M + 2]
        return table.index_select(0, idx.flatten()).view(idx.shape)

    def forward(self, distance: Tensor) -> Tensor:
        return self.lookup(self.bucket(distance))

    def extra_repr(self) -> str:
        return f"num_buckets={self.num_buckets}, max_distance={self.max_distance}, bidirectional={self.bidirectional}"


def relative_bias_ref(weight: Tensor, distance: Tensor, max_distance: int, bidirectional: bool) -> Tensor:
    """Reference for :class:`RelativePositionBias`: bucket each distance directly and index."""
    return weight[relative_bucket(distance, weight.shape[0], max_distance, bidirectional)]


class FourierRelativeBias(nn.Module):
    """Learned bias of the original-position distance as a short Fourier series, paid per token.

    ``bias(d) = sum_m a_m cos(w_m d) + b_m sin(w_m d)`` over ``M`` fixed frequencies ``w_m``,
    geometric from ``pi / 2`` down to ``pi / (2 * max_distance)``. The sum factorises into
    features of each position, ``bias(p_q - p_k) = <query_features(p_q), key_features(p_k)>``,
    so appending ``2M`` features to queries and keys puts the bias into the score product:
    no per-pair gather, and no scatter into a table in backward (the per-pair bucket table of
    :class:`RelativePositionBias` costs more than the attention it biases on a compacted CPU
    step). :meth:`forward` evaluates the series per distance (the reference, and decoding).

    Args:
        num_frequencies (int): ``M``. Default: 8.
        max_distance (int): the longest period is ``4 * max_distance``. Default: 1024.

    Shape:
        - positions: ``[...]`` integer; features: ``[..., 2M]``
        - distance: any shape; output: the same shape, float

    Examples::

        >>> bias = FourierRelativeBias(4, 128)
        >>> _ = nn.init.normal_(bias.weight)
        >>> p = torch.tensor([[0, 3, 9]])
        >>> q, k = bias.query_features(p), bias.key_features(p)      # [1, 3, 8] each
        >>> pairwise = q @ k.transpose(-1, -2)                       # [1, 3, 3]
        >>> torch.allclose(pairwise, bias(p[..., None] - p[..., None, :]), atol=1e-5)
        True
    """

    def __init__(self, num_frequencies: int = 8, max_distance: int = 1024):
        super().__init__()
        if num_frequencies < 1 or max_distance < 1:
            raise ValueError(f"num_frequencies and max_distance must be >= 1, got {num_frequencies}, {max_distance}")
        self.num_frequencies, self.max_distance = num_frequencies, max_distance
        self.weight = nn.Parameter(torch.empty(2, num_frequencies))  # cosine and sine amplitudes
        steps = torch.arange(num_frequencies, dtype=torch.float32) / max(num_frequencies - 1, 1)
        self.register_buffer("freq", (math.pi / 2) * float(max_distance) ** -steps, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)  # starts as no bias, as rotary alone

    @property
    def dim(self) -> int:
        """Features per position, ``2M``."""
        return 2 * self.num_frequencies

    def _angles(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        # float64 angles: w p reaches ~1e5 rad on long sequences, where float32 is off by ~1e-2
        angle = positions.unsqueeze(-1).to(torch.float64) * self.freq.to(torch.float64)  # [..., M]
        return angle.cos().to(self.weight.dtype), angle.sin().to(self.weight.dtype)

    def key_features(self, positions: Tensor) -> Tensor:
        """``[..., 2M]``: ``(cos w p, sin w p)``."""
        return torch.cat(self._angles(positions), dim=-1)

    def query_features(self, positions: Tensor) -> Tensor:
        """``[..., 2M]``: ``(a cos w p + b sin w p, a sin w p - b cos w p)``, whose product with the
        key features of ``p_k`` is ``a cos(w (p - p_k)) + b sin(w (p - p_k))``."""
        cos, sin = self._angles(positions)
        a, b = self.weight
        return torch.cat((a * cos + b * sin, a * sin - b * cos), dim=-1)

    def forward(self, distance: Tensor) -> Tensor:
        cos, sin = self._angles(distance)
        return (cos * self.weight[0] + sin * self.weight[1]).sum(-1)

    def extra_repr(self) -> str:
        return f"num_frequencies={self.num_frequencies}, max_distance={self.max_distance}"
