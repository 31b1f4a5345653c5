"""The :class:`Compacted` record, :func:`compact_like` (another tensor, same pattern) and
:func:`build_index` (the bookkeeping alone)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import naive
from .autograd import GatherRows
from .backend import resolve

PADDED, FLAT = "padded", "flat"


@dataclass
class Compacted:
    """Routed tokens gathered in their original order, plus what :func:`extract` needs.

    Attributes:
        values (Tensor or None): ``[B, K, D]`` (padded layout) or ``[N, D]`` (flat layout).
            Padding slots hold zeros. ``None`` from :func:`build_index` (bookkeeping only).
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

    Examples::

        >>> packed = build_index(torch.tensor([[True, False, True]]))
        >>> packed.positions, packed.capacity
        (tensor([[0, 2]]), 2)
    """

    values: Tensor | None
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
        return self.mask.shape[-1]

    def kept(self) -> Tensor:
        """``[B, L]`` bool, True for each token that has a slot."""
        if self.active is not None:
            return self.active
        B, L = self.batch_size, self.seq_len
        flags = torch.zeros(B * L + 1, dtype=torch.bool, device=self.scatter_index.device)
        return flags.index_fill_(0, self.scatter_index, True)[: B * L].view(B, L)

    def compact(self, t: Tensor, backend: str = "auto") -> Tensor:
        """Compact another ``[B, L, *]`` tensor with the same pattern; see :func:`compact_like`."""
        return compact_like(t, self, backend=backend)


def compact_like(t: Tensor, packed: Compacted, backend: str = "auto") -> Tensor:
    """Compact another tensor with the pattern of an earlier :func:`compress` (differentiable).

    Args:
        t (Tensor): ``[B, L, *]``, e.g. positions or a second input of the module.
        packed (Compacted): the compaction to copy.
        backend (str): as in :func:`compress`. Default: ``"auto"``.

    Returns:
        Tensor: ``[B, K, *]`` (padded layout, zeros on padding slots) or ``[N, *]`` (flat).

    Examples::

        >>> active = torch.tensor([[True, False, True]])
        >>> packed = compress(torch.randn(1, 3, 4), active)
        >>> compact_like(torch.tensor([[10.0, 20.0, 30.0]]), packed)
        tensor([[10., 30.]])
    """
    if not isinstance(t, Tensor) or t.dim() < 2 or tuple(t.shape[:2]) != (packed.batch_size, packed.seq_len):
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(
            f"tensor to compact must have shape [B, L, ...] = [{packed.batch_size}, {packed.seq_len}, ...], got {shape}"
        )
    B, L = packed.batch_size, packed.seq_len
    flat = packed.layout == FLAT
    values = GatherRows.apply(t.reshape(B * L, math.prod(t.shape[2:])), packed.kept(), packed.counts,
                              packed.scatter_index, packed.capacity, flat, resolve(backend, t.device))
    lead = values.shape[:1] if flat else (B, packed.capacity)
    return values.view(*lead, *t.shape[2:])


def check_active(active: Tensor, batch_shape: tuple | None = None) -> None:
    """``active`` must be a bool ``[B, L]`` tensor (``batch_shape`` when given)."""
    if not isinstance(active, Tensor):
        raise TypeError(f"active must be a bool Tensor of shape [B, L], got {type(active).__name__}")
    if active.dtype != torch.bool:
        raise TypeError(f"active must be a bool tensor of shape [B, L], got dtype {active.dtype}")
    if batch_shape is not None and tuple(active.shape) != batch_shape:
        raise ValueError(f"active must have shape [B, L] = {batch_shape} to match x, got {tuple(active.shape)}")
    if active.dim() != 2:
        raise ValueError(f"active must have shape [B, L], got {tuple(active.shape)}")


def check_capacity_layout(capacity, layout: str) -> None:
    if layout not in (PADDED, FLAT):
        raise ValueError(f"layout must be 'padded' or 'flat', got {layout!r}")
    if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, (int, torch.SymInt))
                                 or capacity < 1):
        raise ValueError(f"capacity must be a positive int (slots per row), got {capacity!r}")


def build_index(active: Tensor, capacity: int | None = None, layout: str = PADDED) -> Compacted:
    """The slot bookkeeping of :func:`compress` without moving any feature (``values`` is ``None``).

    Args:
        active (Tensor): bool ``[B, L]``, True where the token is routed.
        capacity (int, optional): slots per row, as in :func:`compress`. Default: ``None``.
        layout (str): ``"padded"`` or ``"flat"``. Default: ``"padded"``.

    Returns:
        Compacted: ``mask``, ``positions``, ``counts``, ``scatter_index`` (and ``batch_index``
        in the flat layout); ``values`` is ``None``.

    Examples::

        >>> build_index(torch.tensor([[False, True, True], [True, False, False]])).positions
        tensor([[ 1,  2],
                [ 0, -1]])
    """
    check_active(active)
    check_capacity_layout(capacity, layout)
    flat = layout == FLAT
    positions, mask, counts, scatter_index, batch_index, kept = naive.build_index(active, capacity or 0, flat)
    return Compacted(None, mask, positions, counts, batch_index if flat else None, scatter_index,
                     active.shape[1], layout, kept)
