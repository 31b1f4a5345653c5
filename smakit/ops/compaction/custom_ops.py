"""Compaction launchers as ``torch.library`` custom ops, so ``torch.compile`` traces them.

Five ops, each with a ``backend`` argument (``"torch"``: the reference in ``naive.py`` plus
:func:`~smakit.ops.compaction.layout.build_index`; ``"triton"``: ``triton.py``):

* ``smakit::compress``          ``x [B, L, D]``, ``active`` -> values and index tensors
* ``smakit::compress_backward`` slot gradients -> ``grad_x [B*L, D]`` (also the backward of
  ``smakit::gather``)
* ``smakit::gather``            another ``[B*L, F]`` tensor into the slots (``compact_like``)
* ``smakit::extract``           ``h [S, D]``, ``gate`` -> ``out [B*L, D]``
* ``smakit::extract_backward``  -> ``grad_h [S, D]``, ``grad_gate [B*L]`` (float32)

Their fake implementations give output shapes without data. The number of slots is data
dependent in the dynamic modes (padded with ``capacity=0``: ``K`` = the longest row; flat:
``N``); the fakes then return an unbacked size (``new_dynamic_size``), so even those modes
compile without a graph break, and the one host sync happens inside the op at run time.

:func:`call` runs the op through the dispatcher only while compiling; eager calls go
straight to the implementation, which saves the dispatcher's per-call overhead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import naive
from .layout import FLAT, PADDED, build_index

_EMPTY = (0,)


def _triton():
    from . import triton as triton_kernels

    return triton_kernels


# reference implementations (what backend="torch" runs)


def _ref_compress(x: Tensor, active: Tensor, capacity: int, flat: bool):
    B, L, D = x.shape
    idx = build_index(active, capacity or None, FLAT if flat else PADDED)
    pad = None if flat else ~idx.mask.reshape(-1)
    values = naive.compress_fwd(x.reshape(B * L, D), idx.scatter_index, pad)
    batch = idx.batch_index if flat else idx.scatter_index.new_empty(_EMPTY)
    values = values.view(-1, D) if flat else values.view(B, idx.mask.shape[1], D)
    return values, idx.positions, idx.mask, idx.counts, idx.scatter_index, batch, idx.active


def _slot_scale(gate: Tensor | None, index: Tensor, mask: Tensor, rows: int, flat: bool, dtype) -> Tensor | None:
    """Per-slot multiplier: the gate at each slot's token (0 on padding), or the mask."""
    if gate is None:
        return None if flat else mask.reshape(-1).to(dtype)
    scale = gate.reshape(-1).index_select(0, index.clamp(max=max(rows - 1, 0))) if rows else gate.new_zeros(index.shape)
    return scale if flat else torch.where(mask.reshape(-1), scale, 0)


# ops


@torch.library.custom_op("smakit::compress", mutates_args=())
def compress(
    x: Tensor, active: Tensor, capacity: int, flat: bool, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(values, positions, mask, counts, scatter_index, batch_index, kept)``; see ``triton.compress_fwd``."""
    if backend == "triton":
        return _triton().compress_fwd(x, active, capacity, flat)
    return _ref_compress(x, active, capacity, flat)


@compress.register_fake
def _(x, active, capacity, flat, backend):
    B, L, D = x.shape
    ctx = torch.library.get_ctx()
    if flat:
        lead = (ctx.new_dynamic_size(),)
    else:
        lead = (B, capacity if capacity else ctx.new_dynamic_size(min=1))
    S = lead[0] if flat else B * lead[1]
    long = dict(dtype=torch.int64, device=x.device)
    return (
        x.new_empty(*lead, D),
        torch.empty(lead, **long),
        torch.empty(lead, dtype=torch.bool, device=x.device),
        torch.empty(B, **long),
        torch.empty(S, **long),
        torch.empty(S if flat else 0, **long),
        torch.empty(B, L, dtype=torch.bool, device=x.device),
    )


@torch.library.custom_op("smakit::compress_backward", mutates_args=())
def compress_backward(
    grad_values: Tensor, kept: Tensor, counts: Tensor, scatter_index: Tensor, K: int, flat: bool, backend: str
) -> Tensor:
    """``grad_values [S, D]`` -> ``grad_x [B*L, D]`` (one-to-one, zeros at unkept tokens)."""
    if backend == "triton":
        return _triton().scatter_rows(grad_values, kept, counts, K, flat)
    return naive.compress_bwd(grad_values, scatter_index, kept.numel())


@compress_backward.register_fake
def _(grad_values, kept, counts, scatter_index, K, flat, backend):
    return grad_values.new_empty(kept.numel(), grad_values.shape[-1])


@torch.library.custom_op("smakit::gather", mutates_args=())
def gather(t: Tensor, scatter_index: Tensor, mask: Tensor, flat: bool, backend: str) -> Tensor:
    """``t [B*L, F]`` -> ``[S, F]``, the rows of each slot's token (zeros on padding)."""
    if backend == "triton":
        return _triton().gather_rows(t, scatter_index)[0]
    return naive.compress_fwd(t, scatter_index, None if flat else ~mask.reshape(-1))


@gather.register_fake
def _(t, scatter_index, mask, flat, backend):
    return t.new_empty(scatter_index.shape[0], t.shape[-1])


@torch.library.custom_op("smakit::extract", mutates_args=())
def extract(
    h: Tensor, gate: Tensor | None, kept: Tensor, counts: Tensor, scatter_index: Tensor, mask: Tensor,
    K: int, flat: bool, backend: str,
) -> Tensor:
    """``h [S, D]`` -> ``out [B*L, D]``: ``gate * h`` at each slot's token, zeros elsewhere."""
    rows = kept.numel()
    if backend == "triton":
        return _triton().scatter_rows(h, kept, counts, K, flat, gate)
    scale = _slot_scale(gate, scatter_index, mask, rows, flat, h.dtype)
    return naive.extract_fwd(h, scale, scatter_index, rows)


@extract.register_fake
def _(h, gate, kept, counts, scatter_index, mask, K, flat, backend):
    return h.new_empty(kept.numel(), h.shape[-1])


@torch.library.custom_op("smakit::extract_backward", mutates_args=())
def extract_backward(
    grad_out: Tensor, h: Tensor, gate: Tensor | None, scatter_index: Tensor, mask: Tensor,
    need_gate_grad: bool, flat: bool, backend: str,
) -> tuple[Tensor, Tensor]:
    """``(grad_h [S, D], grad_gate [B*L] float32)``; ``grad_gate`` is empty unless asked for."""
    rows = grad_out.shape[0]
    if backend == "triton":
        grad_h, grad_gate = _triton().gather_rows(grad_out, scatter_index, gate, h if need_gate_grad else None)
    else:
        scale = _slot_scale(gate, scatter_index, mask, rows, flat, h.dtype)
        grad_h, grad_scale = naive.extract_bwd(grad_out, h, scale, scatter_index, need_gate_grad)
        grad_gate = None
        if need_gate_grad:
            grad_gate = grad_scale.new_zeros(rows + 1).index_copy_(0, scatter_index, grad_scale)[:rows]
    if grad_gate is None:
        grad_gate = grad_out.new_empty(0, dtype=torch.float32)
    return grad_h, grad_gate


@extract_backward.register_fake
def _(grad_out, h, gate, scatter_index, mask, need_gate_grad, flat, backend):
    rows = grad_out.shape[0] if need_gate_grad else 0
    return h.new_empty(h.shape), grad_out.new_empty(rows, dtype=torch.float32)


_IMPLS = {op: op._init_fn for op in (compress, compress_backward, gather, extract, extract_backward)}


def call(op, *args):
    """Run ``op``: through the dispatcher while compiling (a traceable leaf), directly otherwise."""
    if torch.compiler.is_compiling():
        return op(*args)
    return _IMPLS[op](*args)
