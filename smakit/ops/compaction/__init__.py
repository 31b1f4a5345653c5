"""Order-preserving compaction: :func:`compress` routed tokens, :func:`extract` outputs back.

Layers (see ``naive.py`` for the reference row movers):
row movers (``naive`` / ``triton``) -> ``CompressFunction`` / ``ExtractFunction`` (autograd)
-> :func:`compress` / :func:`extract` (validated public functions).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import naive
from .layout import FLAT, PADDED, CompactionIndex, Compacted, build_index

BACKENDS = ("auto", "torch", "triton")


def _movers(backend: str, device: torch.device):
    """The module of row movers for ``backend`` on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return naive
    try:
        from . import triton as triton_movers
    except ImportError as err:
        if backend == "triton":
            raise ImportError("backend='triton' needs the triton package") from err
        return naive
    return triton_movers


class CompressFunction(torch.autograd.Function):
    """``x [B*L, D]`` -> ``values [S, D]``; backward scatters gradients one-to-one."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, pad: Tensor | None, movers) -> Tensor:
        ctx.save_for_backward(index)
        ctx.rows, ctx.movers = x.shape[0], movers
        return movers.compress_fwd(x, index, pad)

    @staticmethod
    def backward(ctx, grad_values: Tensor):
        (index,) = ctx.saved_tensors
        grad_x = ctx.movers.compress_bwd(grad_values.contiguous(), index, ctx.rows)
        return grad_x, None, None, None


class ExtractFunction(torch.autograd.Function):
    """``h [S, D]``, ``scale [S]`` -> ``out [B*L, D]`` (``scale * h`` at each slot's token)."""

    @staticmethod
    def forward(ctx, h: Tensor, scale: Tensor | None, index: Tensor, rows: int, movers) -> Tensor:
        ctx.save_for_backward(h, scale, index)
        ctx.movers = movers
        return movers.extract_fwd(h, scale, index, rows)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        h, scale, index = ctx.saved_tensors
        need_scale = scale is not None and ctx.needs_input_grad[1]
        grad_h, grad_scale = ctx.movers.extract_bwd(grad_out.contiguous(), h, scale, index, need_scale)
        if grad_scale is not None:
            grad_scale = grad_scale.to(scale.dtype)
        return grad_h, grad_scale, None, None, None


def _check_x_active(x: Tensor, active: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor of shape [B, L, D], got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"x must have shape [B, L, D], got {tuple(x.shape)}")
    if not isinstance(active, Tensor):
        raise TypeError(f"active must be a bool Tensor of shape [B, L], got {type(active).__name__}")
    if active.dtype != torch.bool:
        raise TypeError(f"active must be a bool tensor of shape [B, L], got dtype {active.dtype}")
    if tuple(active.shape) != tuple(x.shape[:2]):
        raise ValueError(
            f"active must have shape [B, L] = {tuple(x.shape[:2])} to match x, got {tuple(active.shape)}"
        )


def compress(
    x: Tensor,
    active: Tensor,
    *,
    capacity: int | None = None,
    layout: str = PADDED,
    backend: str = "auto",
) -> Compacted:
    """Gather the active tokens of each row, in their original order.

    Args:
        x (Tensor): tokens ``[B, L, D]``.
        active (Tensor): bool ``[B, L]``, True where the token is routed to the module.
        capacity (int, optional): fixed slots per row ``K`` (padded layout). Tokens past a
            row's ``K``-th active one are dropped (treated as skipped). With ``None``, ``K``
            is the longest row (at least 1), which costs one host sync. Default: ``None``.
        layout (str): ``"padded"`` gives ``values [B, K, D]`` with right-padded rows;
            ``"flat"`` gives ``values [N, D]``, no padding, for pointwise modules.
            Default: ``"padded"``.
        backend (str): ``"auto"`` (Triton for CUDA tensors when available, else torch),
            ``"torch"`` or ``"triton"``. Default: ``"auto"``.

    Returns:
        Compacted: ``values``, ``mask``, ``positions``, ``counts`` and the index that
        :func:`extract` uses. Differentiable in ``x``.

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
    _check_x_active(x, active)
    if layout not in (PADDED, FLAT):
        raise ValueError(f"layout must be 'padded' or 'flat', got {layout!r}")
    if capacity is not None and (not isinstance(capacity, int) or capacity < 1):
        raise ValueError(f"capacity must be a positive int (slots per row), got {capacity!r}")
    idx = build_index(active, capacity, layout)
    values = _compress_with(x, idx, backend)
    return Compacted(values, idx.mask, idx.positions, idx.counts, idx.batch_index,
                     idx.scatter_index, idx.seq_len, idx.layout)


def _compress_with(x: Tensor, idx: CompactionIndex | Compacted, backend: str) -> Tensor:
    B, L = x.shape[:2]
    feat = x.shape[2:]
    movers = _movers(backend, x.device)
    pad = ~idx.mask.reshape(-1) if idx.layout == PADDED else None
    flat = CompressFunction.apply(x.reshape(B * L, math.prod(feat)), idx.scatter_index, pad, movers)
    if idx.layout == PADDED:
        return flat.view(B, -1, *feat)
    return flat.view(-1, *feat)


def compact_like(t: Tensor, packed: Compacted, backend: str = "auto") -> Tensor:
    """Compact ``t [B, L, *]`` with the pattern of ``packed`` (differentiable)."""
    if not isinstance(t, Tensor) or t.dim() < 2 or tuple(t.shape[:2]) != (packed.batch_size, packed.seq_len):
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(
            f"tensor to compact must have shape [B, L, ...] = [{packed.batch_size}, {packed.seq_len}, ...], got {shape}"
        )
    if t.dim() == 2:
        return _compress_with(t.unsqueeze(-1), packed, backend).squeeze(-1)
    return _compress_with(t, packed, backend)


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
        Differentiable in ``h`` and ``gate``.
    """
    if not isinstance(packed, Compacted):
        raise TypeError(f"packed must be the Compacted returned by compress, got {type(packed).__name__}")
    B, L = packed.batch_size, packed.seq_len
    lead = (B, packed.capacity) if packed.layout == PADDED else (packed.capacity,)
    if not isinstance(h, Tensor) or h.dim() != len(lead) + 1 or tuple(h.shape[:-1]) != lead:
        shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
        want = "[B, K, D']" if packed.layout == PADDED else "[N, D']"
        raise ValueError(f"h must have shape {want} with leading dims {lead}, got {shape}")
    scale = None
    if gate is not None:
        if not isinstance(gate, Tensor) or tuple(gate.shape) != (B, L):
            shape = tuple(gate.shape) if isinstance(gate, Tensor) else type(gate).__name__
            raise ValueError(f"gate must have shape [B, L] = {(B, L)}, got {shape}")
        if not gate.is_floating_point():
            raise TypeError(f"gate must be a floating tensor, got dtype {gate.dtype}")
        scale = gate.reshape(-1).index_select(0, packed.gather_index) if B * L else gate.new_zeros(packed.scatter_index.shape)
        if packed.layout == PADDED:
            scale = torch.where(packed.mask.reshape(-1), scale, 0)
    elif packed.layout == PADDED:
        scale = packed.mask.reshape(-1).to(h.dtype)  # zero the padding slots' gradient
    movers = _movers(backend, h.device)
    flat = ExtractFunction.apply(h.reshape(-1, h.shape[-1]), scale, packed.scatter_index, B * L, movers)
    return flat.view(B, L, h.shape[-1])


__all__ = ["Compacted", "compress", "extract", "compact_like", "build_index"]
