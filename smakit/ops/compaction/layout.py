"""The :class:`Compacted` record, :func:`compact_like` (another tensor, same pattern) and
:func:`build_index` (the bookkeeping alone)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..._deprecation import warn_renamed
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

    The tokens that got a slot (routed, less any dropped by ``slots``) are :meth:`kept`; the
    op passes them as ``kept`` (the Triton backend finds slots from them), and a record built
    by hand without them rebuilds them from ``scatter_index``.

    Examples::

        >>> packed = build_index(torch.tensor([[True, False, True]]))
        >>> packed.positions, packed.slots
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
    # the kept flags when the op produced them (the Triton backend finds slots from them with a
    # prefix sum); None when built by hand: kept() rebuilds them from scatter_index
    _kept: Tensor | None = field(default=None, init=False, repr=False)

    def __init__(self, values: Tensor | None, mask: Tensor, positions: Tensor, counts: Tensor,
                 batch_index: Tensor | None, scatter_index: Tensor, seq_len: int, layout: str,
                 kept: Tensor | None = None, *, active: Tensor | None = None):
        if active is not None:  # the old keyword for the kept flags
            warn_renamed("Compacted(active=)", "Compacted(kept=)")
            kept = active if kept is None else kept
        self.values, self.mask, self.positions, self.counts = values, mask, positions, counts
        self.batch_index, self.scatter_index, self.seq_len, self.layout = batch_index, scatter_index, seq_len, layout
        self._kept = kept

    @property
    def batch_size(self) -> int:
        return self.counts.shape[0]

    @property
    def slots(self) -> int:
        """Slots per row ``K`` (padded layout) or slots in all ``N`` (flat layout)."""
        return self.mask.shape[-1]

    def kept(self) -> Tensor:
        """``[B, L]`` bool, True for each token that got a slot (routed and not dropped)."""
        if self._kept is not None:
            return self._kept
        B, L = self.batch_size, self.seq_len
        flags = torch.zeros(B * L + 1, dtype=torch.bool, device=self.scatter_index.device)
        return flags.index_fill_(0, self.scatter_index, True)[: B * L].view(B, L)

    @property
    def capacity(self) -> int:
        """Deprecated: :attr:`slots`."""
        warn_renamed("Compacted.capacity (a slot count)", "Compacted.slots")
        return self.slots

    @property
    def active(self) -> Tensor:
        """Deprecated: :meth:`kept`."""
        warn_renamed("Compacted.active", "Compacted.kept()")
        return self.kept()

    @active.setter
    def active(self, flags: Tensor | None) -> None:
        warn_renamed("Compacted.active", "Compacted.kept()")
        self._kept = flags

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
    return _compact_like(t, packed, backend)


def _compact_like(t: Tensor, packed: Compacted, backend: str = "auto") -> Tensor:
    """:func:`compact_like` without the input check (for callers that checked ``t`` already)."""
    B, L = packed.batch_size, packed.seq_len
    flat = packed.layout == FLAT
    values = GatherRows.apply(t.reshape(B * L, math.prod(t.shape[2:])), packed.kept(), packed.counts,
                              packed.scatter_index, packed.slots, flat, resolve(backend, t.device))
    lead = values.shape[:1] if flat else (B, packed.slots)
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


def check_slots_layout(slots, layout: str) -> None:
    if layout not in (PADDED, FLAT):
        raise ValueError(f"layout must be 'padded' or 'flat', got {layout!r}")
    if slots is not None and (isinstance(slots, bool) or not isinstance(slots, (int, torch.SymInt)) or slots < 1):
        raise ValueError(f"slots must be a positive int (slots per row), got {slots!r}")


def renamed_slots(slots: int | None, capacity, fn: str) -> int | None:
    """``slots``, or the slot count given under the deprecated keyword ``capacity=`` of ``fn``."""
    if capacity is None:
        return slots
    if slots is not None:
        raise TypeError(f"{fn}() got slots= and its old spelling capacity=; pass slots= alone")
    if isinstance(capacity, float):  # a capacity is a fraction now; this keyword only ever took slots
        raise ValueError(f"{fn}() takes slots=K (an int); for a fraction c of the row pass "
                         f"slots=capacity_slots(c, L), got capacity={capacity!r}")
    warn_renamed(f"{fn}(capacity=K) (a slot count)", f"{fn}(slots=K)", stacklevel=4)
    return capacity


def build_index(active: Tensor, slots: int | None = None, layout: str = PADDED, *, capacity: int | None = None
                ) -> Compacted:
    """The slot bookkeeping of :func:`compress` without moving any feature (``values`` is ``None``).

    Args:
        active (Tensor): bool ``[B, L]``, True where the token is routed.
        slots (int, optional): slots per row, as in :func:`compress`. Default: ``None``.
        layout (str): ``"padded"`` or ``"flat"``. Default: ``"padded"``.
        capacity (int, optional): deprecated spelling of ``slots`` (removed in 0.3).

    Returns:
        Compacted: ``mask``, ``positions``, ``counts``, ``scatter_index`` (and ``batch_index``
        in the flat layout); ``values`` is ``None``.

    Examples::

        >>> build_index(torch.tensor([[False, True, True], [True, False, False]])).positions
        tensor([[ 1,  2],
                [ 0, -1]])
    """
    slots = renamed_slots(slots, capacity, "build_index")
    check_active(active)
    check_slots_layout(slots, layout)
    flat = layout == FLAT
    positions, mask, counts, scatter_index, batch_index, kept = naive.build_index(active, slots or 0, flat)
    return Compacted(None, mask, positions, counts, batch_index if flat else None, scatter_index,
                     active.shape[1], layout, kept)
