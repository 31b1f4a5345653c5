"""Autograd functions over the custom ops: compress, extract, and the two row movers.

``ScatterRows`` (slots -> tokens) and ``GatherRows`` (tokens -> slots) are each other's
backward, so every gradient here is again differentiable: when a backward runs with
``create_graph=True`` (grad mode on inside it), it is built from these two functions and
second-order gradients (Hessian-vector products, ``gradgradcheck``) are exact on both
backends. A first-order backward takes the fused path instead (``extract``'s backward: one
kernel for ``grad_h`` and ``grad_gate``). Compiled graphs always take the fused path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import custom_ops as ops
from .custom_ops import call


def _differentiable_backward() -> bool:
    """Whether this backward must itself be differentiable (``create_graph=True``)."""
    return torch.is_grad_enabled() and not torch.compiler.is_compiling()


def scatter(src: Tensor, kept: Tensor, counts: Tensor, scatter_index: Tensor, K: int, flat: bool,
            backend: str) -> Tensor:
    """``src [S, D]`` -> ``[B*L, D]`` (zeros at tokens without a slot); differentiable."""
    if _differentiable_backward():
        return ScatterRows.apply(src, kept, counts, scatter_index, K, flat, backend)
    return call(ops.scatter_rows, src.contiguous(), None, kept, counts, scatter_index, K, flat, backend)


def gather(t: Tensor, kept: Tensor, counts: Tensor, scatter_index: Tensor, K: int, flat: bool,
           backend: str) -> Tensor:
    """``t [B*L, D]`` -> ``[S, D]`` (zeros on padding slots); differentiable."""
    if _differentiable_backward():
        return GatherRows.apply(t, kept, counts, scatter_index, K, flat, backend)
    return call(ops.gather_rows, t.contiguous(), None, None, scatter_index, backend)[0]


class ScatterRows(torch.autograd.Function):
    """Slots ``[S, D]`` -> tokens ``[B*L, D]``; backward: :class:`GatherRows`."""

    @staticmethod
    def forward(ctx, src, kept, counts, scatter_index, K, flat, backend):
        ctx.save_for_backward(kept, counts, scatter_index)
        ctx.K, ctx.flat, ctx.backend = K, flat, backend
        return call(ops.scatter_rows, src.contiguous(), None, kept, counts, scatter_index, K, flat, backend)

    @staticmethod
    def backward(ctx, grad):
        return gather(grad, *ctx.saved_tensors, ctx.K, ctx.flat, ctx.backend), *([None] * 6)


class GatherRows(torch.autograd.Function):
    """Tokens ``[B*L, D]`` -> slots ``[S, D]``; backward: :class:`ScatterRows`."""

    @staticmethod
    def forward(ctx, t, kept, counts, scatter_index, K, flat, backend):
        ctx.save_for_backward(kept, counts, scatter_index)
        ctx.K, ctx.flat, ctx.backend = K, flat, backend
        return call(ops.gather_rows, t.contiguous(), None, None, scatter_index, backend)[0]

    @staticmethod
    def backward(ctx, grad):
        return scatter(grad, *ctx.saved_tensors, ctx.K, ctx.flat, ctx.backend), *([None] * 6)


class CompressFunction(torch.autograd.Function):
    """``x [B, L, D]`` -> values and index tensors; backward scatters gradients one-to-one."""

    @staticmethod
    def forward(ctx, x: Tensor, active: Tensor, slots: int, flat: bool, backend: str):
        out = call(ops.compress, x, active, slots, flat, backend)
        _, positions, mask, counts, scatter_index, batch_index, kept = out
        ctx.mark_non_differentiable(positions, mask, counts, scatter_index, batch_index, kept)
        ctx.save_for_backward(kept, counts, scatter_index)
        ctx.flat, ctx.backend = flat, backend
        ctx.K = mask.shape[-1]
        return out

    @staticmethod
    def backward(ctx, grad_values: Tensor, *_):
        kept, counts, scatter_index = ctx.saved_tensors
        B, L = kept.shape
        grad = grad_values.reshape(scatter_index.shape[0], grad_values.shape[-1])  # [S, D]
        grad_x = scatter(grad, kept, counts, scatter_index, ctx.K, ctx.flat, ctx.backend)
        return grad_x.view(B, L, grad.shape[-1]), None, None, None, None


class ExtractFunction(torch.autograd.Function):
    """``h [S, D]``, ``gate [B, L]`` -> ``out [B*L, D]`` (``gate * h`` at each slot's token)."""

    @staticmethod
    def forward(ctx, h: Tensor, gate: Tensor | None, kept: Tensor, counts: Tensor, scatter_index: Tensor,
                K: int, flat: bool, backend: str) -> Tensor:
        ctx.save_for_backward(h, gate, kept, counts, scatter_index)
        ctx.K, ctx.flat, ctx.backend = K, flat, backend
        return call(ops.scatter_rows, h.contiguous(), gate, kept, counts, scatter_index, K, flat, backend)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        h, gate, *index = ctx.saved_tensors
        need_gate = gate is not None and ctx.needs_input_grad[1]
        if _differentiable_backward():
            grad_h, grad_gate = _extract_backward_graph(grad_out, h, gate, need_gate, index, ctx)
        else:
            grad_h, grad_gate = call(ops.gather_rows, grad_out.contiguous(), gate, h if need_gate else None,
                                     index[2], ctx.backend)
        grad_gate = grad_gate.view(gate.shape).to(gate.dtype) if need_gate else None
        return grad_h, grad_gate, None, None, None, None, None, None


def _extract_backward_graph(grad_out, h, gate, need_gate, index, ctx):
    """Extract's backward from differentiable pieces (for ``create_graph=True``)."""
    g = gather(grad_out, *index, ctx.K, ctx.flat, ctx.backend)  # [S, D]
    grad_h = g
    if gate is not None:
        gate_at_slot = gather(gate.reshape(-1, 1), *index, ctx.K, ctx.flat, ctx.backend)  # [S, 1]
        grad_h = g * gate_at_slot.to(g.dtype)
    grad_gate = None
    if need_gate:
        acc = torch.promote_types(h.dtype, torch.float32)
        grad_gate = scatter((g.to(acc) * h.to(acc)).sum(1, keepdim=True), *index, ctx.K, ctx.flat, ctx.backend)
    return grad_h, grad_gate
