"""Order-preserving compaction: :func:`compress` routed tokens, :func:`extract` outputs back.

Layers, bottom up: backends ``naive.py`` (plain PyTorch, the reference) and ``triton.py``
(kernels), with the same three functions -> ``backend.py`` (picks one) -> ``custom_ops.py``
(``torch.library`` ops with fake implementations) -> ``autograd.py`` (``CompressFunction``,
``ExtractFunction`` and the row movers; gradients of any order) -> ``layout.py``
(:class:`Compacted`, :func:`compact_like`, :func:`build_index`) -> :func:`compress` /
:func:`extract` here. Inputs are validated once, by the public functions.

Compile: every op is a custom op, so ``torch.compile(..., fullgraph=True)`` traces
:func:`compress` and :func:`extract` without graph breaks. With ``slots=K`` (a fixed number
of slots per row) there is no host sync at all (CUDA graphs). In the dynamic modes (padded
without ``slots``, and flat) the number of slots is data dependent: the op syncs once inside
to size its output, and the traced graph carries it as an unbacked size.

``_compress``, ``_extract`` (and ``layout._compact_like``) are the same without the input
checks, for callers inside smakit that checked their inputs at their own public entry.
"""

from __future__ import annotations

from torch import Tensor

from .autograd import CompressFunction, ExtractFunction
from .backend import resolve
from .layout import (
    FLAT,
    PADDED,
    Compacted,
    build_index,
    check_active,
    check_slots_layout,
    compact_like,
    renamed_slots,
)


def compress(
    x: Tensor,
    active: Tensor,
    *,
    slots: int | None = None,
    layout: str = PADDED,
    backend: str = "auto",
    capacity: int | None = None,
) -> Compacted:
    """Gather the active tokens of each row, in their original order.

    Args:
        x (Tensor): tokens ``[B, L, D]``.
        active (Tensor): bool ``[B, L]``, True where the token is routed to the module.
        slots (int, optional): fixed slots per row ``K``. Tokens past a row's ``K``-th
            active one are dropped: they get no slot and :func:`extract` gives them exact
            zeros, as if skipped (``counts`` and ``packed.kept()`` show what was kept). The
            padded layout then needs no host sync (CUDA graphs, ``fullgraph=True``). With
            ``None``, ``K`` is the longest row (at least 1), which costs one host sync. In
            the flat layout it caps each row the same way, but ``N`` stays data dependent.
            Default: ``None``.
        layout (str): ``"padded"`` gives ``values [B, K, D]`` with right-padded rows;
            ``"flat"`` gives ``values [N, D]``, no padding, for pointwise modules.
            Default: ``"padded"``.
        backend (str): ``"auto"`` (Triton for CUDA tensors when available, else torch),
            ``"torch"`` or ``"triton"``. Default: ``"auto"``.
        capacity (int, optional): deprecated spelling of ``slots`` (removed in 0.3; a
            capacity is a fraction of the row everywhere else).

    Returns:
        Compacted: ``values``, ``mask``, ``positions``, ``counts`` and the index that
        :func:`extract` uses. Differentiable in ``x``, to any order.

    Shape:
        - x: ``[B, L, D]``, active: ``[B, L]``
        - values: ``[B, K, D]`` or ``[N, D]``; mask, positions: ``[B, K]`` or ``[N]``

    Examples::

        >>> x = torch.randn(2, 5, 3)
        >>> active = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
        >>> packed = compress(x, active)
        >>> packed.positions
        tensor([[0, 2],
                [3, 4]])
    """
    slots = renamed_slots(slots, capacity, "compress")
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor of shape [B, L, D], got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"x must have shape [B, L, D], got {tuple(x.shape)}")
    check_active(active, tuple(x.shape[:2]))
    if active.device != x.device:
        raise ValueError(f"active must be on the device of x ({x.device}), got {active.device}")
    check_slots_layout(slots, layout)
    return _compress(x, active, slots, layout, backend)


def _compress(x: Tensor, active: Tensor, slots: int | None, layout: str, backend: str) -> Compacted:
    """:func:`compress` without the input checks."""
    flat = layout == FLAT
    out = CompressFunction.apply(x, active, slots or 0, flat, resolve(backend, x.device))
    values, positions, mask, counts, scatter_index, batch_index, kept = out
    return Compacted(values, mask, positions, counts, batch_index if flat else None, scatter_index,
                     x.shape[1], layout, kept)


def extract(h: Tensor, packed: Compacted, gate: Tensor | None = None, *, backend: str = "auto") -> Tensor:
    """Scatter module outputs back to their original positions, scaled by the gate.

    Args:
        h (Tensor): module output on the compacted tokens, ``[B, K, D']`` (padded layout)
            or ``[N, D']`` (flat layout).
        packed (Compacted): the result of :func:`compress` that produced the module input.
        gate (Tensor, optional): ``[B, L]`` multiplier of each token's output (the router's
            probability). Default: ``None`` (no scaling).
        backend (str): as in :func:`compress`. Default: ``"auto"``.

    Returns:
        Tensor: ``[B, L, D']``, ``gate * h`` at active tokens and exact zeros elsewhere.
        Differentiable in ``h`` and ``gate``, to any order.

    Examples::

        >>> active = torch.tensor([[True, False, True]])
        >>> packed = compress(torch.ones(1, 3, 2), active)
        >>> extract(packed.values * 2, packed, gate=torch.tensor([[0.5, 0.5, 1.0]]))
        tensor([[[1., 1.],
                 [0., 0.],
                 [2., 2.]]])
    """
    if not isinstance(packed, Compacted):
        raise TypeError(f"packed must be the Compacted returned by compress, got {type(packed).__name__}")
    B, L = packed.batch_size, packed.seq_len
    lead = (B, packed.slots) if packed.layout == PADDED else (packed.slots,)
    if not isinstance(h, Tensor) or h.dim() != len(lead) + 1 or tuple(h.shape[:-1]) != lead:
        shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
        want = "[B, K, D']" if packed.layout == PADDED else "[N, D']"
        raise ValueError(f"h must have shape {want} with leading dims {lead}, got {shape}")
    if gate is not None:
        if not isinstance(gate, Tensor) or tuple(gate.shape) != (B, L):
            shape = tuple(gate.shape) if isinstance(gate, Tensor) else type(gate).__name__
            raise ValueError(f"gate must have shape [B, L] = {(B, L)}, got {shape}")
        if not gate.is_floating_point():
            raise TypeError(f"gate must be a floating tensor, got dtype {gate.dtype}")
    return _extract(h, packed, gate, backend)


def _extract(h: Tensor, packed: Compacted, gate: Tensor | None, backend: str) -> Tensor:
    """:func:`extract` without the input checks."""
    h2 = h.reshape(packed.scatter_index.shape[0], h.shape[-1])
    out = ExtractFunction.apply(h2, gate, packed.kept(), packed.counts, packed.scatter_index,
                                packed.slots, packed.layout == FLAT, resolve(backend, h.device))
    return out.view(packed.batch_size, packed.seq_len, h.shape[-1])


__all__ = ["Compacted", "compress", "extract", "compact_like", "build_index"]
