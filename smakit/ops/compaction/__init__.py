"""Order-preserving compaction: :func:`compress` routed tokens, :func:`extract` outputs back.

Layers: row movers (``naive.py`` reference / ``triton.py`` kernels) -> ``custom_ops.py``
(``torch.library`` ops with fake implementations, one per direction) -> ``CompressFunction`` /
``GatherFunction`` / ``ExtractFunction`` (autograd) -> :func:`compress` / :func:`extract` /
:func:`compact_like` (validated public functions).

Compile: every op is a custom op, so ``torch.compile(..., fullgraph=True)`` traces
:func:`compress` and :func:`extract` without graph breaks. With ``capacity=K`` (static
capacity) there is no host sync at all (CUDA graphs). In the dynamic modes (padded without
``capacity``, and flat) the number of slots is data dependent: the op syncs once inside to
size its output, and the traced graph carries it as an unbacked size.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from . import custom_ops as ops
from .layout import FLAT, PADDED, Compacted, build_index

BACKENDS = ("auto", "torch", "triton")


def _triton_usable(device: torch.device) -> bool:
    """Whether the Triton kernels can run on ``device`` (imports them on first use)."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return False
    try:
        from . import triton as triton_kernels
    except ImportError:
        return False
    return triton_kernels.usable_on(device)


@torch.compiler.assume_constant_result
def _resolve(backend: str, device: torch.device) -> str:
    """The backend that runs: ``"torch"`` or ``"triton"``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return "torch"
    if _triton_usable(device):
        return "triton"
    if backend == "auto":
        return "torch"
    raise RuntimeError(
        f"backend='triton' needs the triton package and CUDA tensors (got {device.type} tensors); CPU tensors "
        "run the kernels only under the Triton interpreter, with TRITON_INTERPRET=1 set before smakit imports them"
    )


class CompressFunction(torch.autograd.Function):
    """``x [B, L, D]`` -> values and index tensors; backward scatters gradients one-to-one."""

    @staticmethod
    def forward(ctx, x: Tensor, active: Tensor, capacity: int, flat: bool, backend: str):
        out = ops.call(ops.compress, x, active, capacity, flat, backend)
        values, positions, mask, counts, scatter_index, batch_index, kept = out
        ctx.mark_non_differentiable(positions, mask, counts, scatter_index, batch_index, kept)
        ctx.save_for_backward(kept, counts, scatter_index)
        ctx.flat, ctx.backend = flat, backend
        ctx.K = values.shape[0] if flat else values.shape[1]
        ctx.D = x.shape[-1]
        return out

    @staticmethod
    def backward(ctx, grad_values: Tensor, *_):
        kept, counts, scatter_index = ctx.saved_tensors
        B, L = kept.shape
        grad = grad_values.reshape(scatter_index.shape[0], ctx.D).contiguous()  # [S, D]
        grad_x = ops.call(ops.compress_backward, grad, kept, counts, scatter_index, ctx.K, ctx.flat, ctx.backend)
        return grad_x.view(B, L, ctx.D), None, None, None, None


class GatherFunction(torch.autograd.Function):
    """``t [B*L, F]`` -> ``[S, F]`` with an existing compaction; backward as compress's."""

    @staticmethod
    def forward(ctx, t: Tensor, kept: Tensor, counts: Tensor, scatter_index: Tensor, mask: Tensor,
                K: int, flat: bool, backend: str) -> Tensor:
        ctx.save_for_backward(kept, counts, scatter_index)
        ctx.K, ctx.flat, ctx.backend = K, flat, backend
        return ops.call(ops.gather, t, scatter_index, mask, flat, backend)

    @staticmethod
    def backward(ctx, grad: Tensor):
        kept, counts, scatter_index = ctx.saved_tensors
        grad_t = ops.call(ops.compress_backward, grad.contiguous(), kept, counts, scatter_index,
                          ctx.K, ctx.flat, ctx.backend)
        return grad_t, None, None, None, None, None, None, None


class ExtractFunction(torch.autograd.Function):
    """``h [S, D]``, ``gate [B, L]`` -> ``out [B*L, D]`` (``gate * h`` at each slot's token)."""

    @staticmethod
    def forward(ctx, h: Tensor, gate: Tensor | None, kept: Tensor, counts: Tensor, scatter_index: Tensor,
                mask: Tensor, K: int, flat: bool, backend: str) -> Tensor:
        ctx.save_for_backward(h, gate, scatter_index, mask)
        ctx.flat, ctx.backend = flat, backend
        return ops.call(ops.extract, h, gate, kept, counts, scatter_index, mask, K, flat, backend)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        h, gate, scatter_index, mask = ctx.saved_tensors
        need_gate = gate is not None and ctx.needs_input_grad[1]
        grad_h, grad_gate = ops.call(ops.extract_backward, grad_out.contiguous(), h, gate, scatter_index, mask,
                                     need_gate, ctx.flat, ctx.backend)
        grad_gate = grad_gate.view(gate.shape).to(gate.dtype) if need_gate else None
        return grad_h, grad_gate, None, None, None, None, None, None, None


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
        capacity (int, optional): fixed slots per row ``K`` (static capacity). Tokens past a
            row's ``K``-th active one are dropped: they get no slot and :func:`extract`
            gives them exact zeros, as if skipped (``counts`` and ``packed.active`` show what
            was kept). The padded layout then needs no host sync (CUDA graphs,
            ``fullgraph=True``). With ``None``, ``K`` is the longest row (at least 1), which
            costs one host sync. In the flat layout it caps each row the same way, but
            ``N`` stays data dependent. Default: ``None``.
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
    if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, (int, torch.SymInt))
                                 or capacity < 1):
        raise ValueError(f"capacity must be a positive int (slots per row), got {capacity!r}")
    B, L = x.shape[:2]
    feat = x.shape[2:]
    flat = layout == FLAT
    x3 = x.reshape(B, L, math.prod(feat))
    out = CompressFunction.apply(x3, active, capacity or 0, flat, _resolve(backend, x.device))
    values, positions, mask, counts, scatter_index, batch_index, kept = out
    values = values.view(*values.shape[:-1], *feat)
    return Compacted(values, mask, positions, counts, batch_index if flat else None, scatter_index, L, layout, kept)


def compact_like(t: Tensor, packed: Compacted, backend: str = "auto") -> Tensor:
    """Compact ``t [B, L, *]`` with the pattern of ``packed`` (differentiable)."""
    if not isinstance(t, Tensor) or t.dim() < 2 or tuple(t.shape[:2]) != (packed.batch_size, packed.seq_len):
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(
            f"tensor to compact must have shape [B, L, ...] = [{packed.batch_size}, {packed.seq_len}, ...], got {shape}"
        )
    B, L = packed.batch_size, packed.seq_len
    flat = packed.layout == FLAT
    values = GatherFunction.apply(t.reshape(B * L, math.prod(t.shape[2:])), packed.kept(), packed.counts, packed.scatter_index,
                                  packed.mask, packed.capacity, flat, _resolve(backend, t.device))
    lead = values.shape[:1] if flat else (B, packed.capacity)
    return values.view(*lead, *t.shape[2:])


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
    if gate is not None:
        if not isinstance(gate, Tensor) or tuple(gate.shape) != (B, L):
            shape = tuple(gate.shape) if isinstance(gate, Tensor) else type(gate).__name__
            raise ValueError(f"gate must have shape [B, L] = {(B, L)}, got {shape}")
        if not gate.is_floating_point():
            raise TypeError(f"gate must be a floating tensor, got dtype {gate.dtype}")
    h2 = h.reshape(packed.scatter_index.shape[0], h.shape[-1])
    out = ExtractFunction.apply(h2, gate, packed.kept(), packed.counts, packed.scatter_index,
                                packed.mask, packed.capacity, packed.layout == FLAT, _resolve(backend, h.device))
    return out.view(B, L, h.shape[-1])


__all__ = ["Compacted", "compress", "extract", "compact_like", "build_index"]
