"""The :class:`Compacted` record and the index bookkeeping shared by every backend.

Bookkeeping is done once per routing decision on small integer tensors (``[B, L]``); the
backends only move feature rows with the indices it produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

PADDED, FLAT = "padded", "flat"


@dataclass
class Compacted:
    """Routed tokens gathered in their original order, plus what :func:`extract` needs.

    Attributes:
        values (Tensor): ``[B, K, D]`` (padded layout) or ``[N, D]`` (flat layout). Padding
            slots hold zeros.
        mask (Tensor): ``[B, K]`` bool, True for a real slot (flat layout: ``[N]``, all True).
        positions (Tensor): ``[B, K]`` int64, the original index in ``[0, L)`` of each slot,
            increasing along ``K``; padding slots hold ``-1`` (flat layout: ``[N]``).
        counts (Tensor): ``[B]`` int64, number of real slots per row.
        batch_index (Tensor or None): ``[N]`` row of each token (flat layout only).
        scatter_index (Tensor): ``[S]`` int64 flat index into ``[B * L]`` for each slot
            (``S = B * K`` or ``N``); padding slots point at ``B * L``, one row past the end.
        seq_len (int): ``L``, the original sequence length.
        layout (str): ``"padded"`` or ``"flat"``.
        active (Tensor or None): ``[B, L]`` bool, the tokens that got a slot (the routed
            ones, less any dropped by ``capacity``). The Triton backend finds each token's
            slot from it with a prefix sum. ``None`` when built by hand; it is then
            rebuilt from ``scatter_index`` on demand (see :meth:`kept`).
    """

    values: Tensor
    mask: Tensor
    positions: Tensor
    counts: Tensor
    batch_index: Tensor | None
    scatter_index: Tensor
    seq_len: int
    layout: str
    active: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.counts.shape[0]

    @property
    def capacity(self) -> int:
        """Slots per row ``K`` (padded layout) or total tokens ``N`` (flat layout)."""
        return self.values.shape[-2]

    def kept(self) -> Tensor:
        """``[B, L]`` bool, True for each token that has a slot."""
        if self.active is not None:
            return self.active
        B, L = self.batch_size, self.seq_len
        flags = torch.zeros(B * L + 1, dtype=torch.bool, device=self.scatter_index.device)
        return flags.index_fill_(0, self.scatter_index, True)[: B * L].view(B, L)

    def compact(self, t: Tensor, backend: str = "auto") -> Tensor:
        """Compact another ``[B, L, *]`` tensor with the same pattern (differentiable).

        Returns ``[B, K, *]`` (padded) or ``[N, *]`` (flat), padding slots zero.
        """
        from . import compact_like

        return compact_like(t, self, backend=backend)


@dataclass
class CompactionIndex:
    """Integer bookkeeping of one compaction (no feature data)."""

    mask: Tensor
    positions: Tensor
    counts: Tensor
    batch_index: Tensor | None
    scatter_index: Tensor
    seq_len: int
    layout: str
    active: Tensor  # [B, L] bool, tokens that got a slot (never the caller's tensor)


def build_index(active: Tensor, capacity: int | None = None, layout: str = PADDED) -> CompactionIndex:
    """Slot bookkeeping for ``active [B, L]`` (bool).

    Padded layout: ``K = capacity`` when given (tokens past the ``K``-th active one of a row
    are dropped, so no host sync), otherwise the longest row (one host sync), at least 1 so
    the module always runs and every parameter gets a gradient.
    Flat layout: all active tokens in row-major order (``N`` is data dependent).
    """
    B, L = active.shape
    device = active.device
    if layout == FLAT:
        if capacity is not None:
            slot = active.cumsum(1) - 1
            active = active & (slot < capacity)
        else:
            active = active.clone()
        scatter_index = active.reshape(-1).nonzero().squeeze(1)
        positions = scatter_index % max(L, 1)
        batch_index = scatter_index // max(L, 1)
        counts = active.sum(1)
        mask = torch.ones_like(scatter_index, dtype=torch.bool)
        return CompactionIndex(mask, positions, counts, batch_index, scatter_index, L, FLAT, active)

    slot = active.cumsum(1) - 1  # [B, L] slot of each active token
    if capacity is None:
        counts = active.sum(1)
        K = max(int(counts.max()) if B * L > 0 else 0, 1)
        keep = active.clone()
    else:
        K = int(capacity)
        keep = active & (slot < K)
        counts = keep.sum(1)
    # scatter each kept token's position into its slot; the rest go to a dump column K
    target = torch.where(keep, slot, K)
    positions = torch.full((B, K + 1), -1, dtype=torch.long, device=device)
    positions.scatter_(1, target, torch.arange(L, device=device).expand(B, L))
    positions = positions[:, :K].contiguous()
    mask = positions >= 0
    row_start = torch.arange(B, device=device).unsqueeze(1) * L
    scatter_index = torch.where(mask, positions + row_start, B * L).reshape(-1)
    return CompactionIndex(mask, positions, counts, None, scatter_index, L, PADDED, keep)
