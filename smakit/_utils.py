"""Small helpers shared across smakit (``exists``/``default`` and masking)."""

from __future__ import annotations

from torch import Tensor


def exists(v) -> bool:
    return v is not None


def default(v, d):
    return v if exists(v) else d


def zero_padding(x: Tensor, mask: Tensor | None) -> Tensor:
    """``x [B, L, ...]`` with the rows where ``mask [B, L]`` is False set to zero."""
    if mask is None:
        return x
    return x.masked_fill(~mask.view(*mask.shape, *([1] * (x.dim() - 2))), 0.0)
