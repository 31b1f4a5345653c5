"""The backend functions as ``torch.library`` custom ops, so ``torch.compile`` traces them.

Three ops, one per backend function (see ``backend.py``), each with a ``backend`` argument
(``"torch"`` or ``"triton"``):

* ``smakit::compress``      ``x [B, L, D]``, ``active`` -> values and index tensors
* ``smakit::scatter_rows``  slots ``[S, D]`` -> tokens ``[B*L, D]`` (gate optional)
* ``smakit::gather_rows``   tokens ``[B*L, D]`` -> slots ``[S, D]`` (gate optional), plus the
  per-token dot product with ``h [S, D]`` when given

Their fake implementations give output shapes without data. The number of slots is data
dependent in the dynamic modes (padded with ``slots=0``: ``K`` = the longest row; flat:
``N``); the fakes then return an unbacked size (``new_dynamic_size``), so even those modes
compile without a graph break, and the one host sync happens inside the op at run time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backend import get


def _compress(
    x: Tensor, active: Tensor, slots: int, flat: bool, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return get(backend).compress_fwd(x, active, slots, flat)


def _scatter_rows(src: Tensor, gate: Tensor | None, kept: Tensor, counts: Tensor, scatter_index: Tensor,
                  K: int, flat: bool, backend: str) -> Tensor:
    return get(backend).scatter_rows(src, gate, kept, counts, scatter_index, K, flat)


def _gather_rows(src: Tensor, gate: Tensor | None, h: Tensor | None, scatter_index: Tensor,
                 backend: str) -> tuple[Tensor, Tensor]:
    return get(backend).gather_rows(src, gate, h, scatter_index)


compress = torch.library.custom_op("smakit::compress", _compress, mutates_args=())
scatter_rows = torch.library.custom_op("smakit::scatter_rows", _scatter_rows, mutates_args=())
gather_rows = torch.library.custom_op("smakit::gather_rows", _gather_rows, mutates_args=())


@compress.register_fake
def _(x, active, slots, flat, backend):
    B, L, D = x.shape
    ctx = torch.library.get_ctx()
    if flat:
        lead = (ctx.new_dynamic_size(),)
    else:
        lead = (B, slots if slots else ctx.new_dynamic_size(min=1))
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


@scatter_rows.register_fake
def _(src, gate, kept, counts, scatter_index, K, flat, backend):
    return src.new_empty(kept.numel(), src.shape[-1])


@gather_rows.register_fake
def _(src, gate, h, scatter_index, backend):
    acc = torch.promote_types(src.dtype, torch.float32)
    return src.new_empty(scatter_index.shape[0], src.shape[-1]), src.new_empty(
        src.shape[0] if h is not None else 0, dtype=acc)


# Eager calls run the implementation directly: through the dispatcher, compress + extract
# (forward and backward, four op calls) take 1.4-1.5x the CPU time at B=1 L=16 D=8, 1.35x at
# B=2 L=128 D=64 and 1.05-1.15x at B=8 L=1024 D=256 (one thread, torch 2.13, three runs;
# `python benchmarks/ops_cpu.py --dispatch`). Compiled code must see the ops (graph leaves).
_EAGER = {compress: _compress, scatter_rows: _scatter_rows, gather_rows: _gather_rows}
BYPASS_DISPATCHER = True


def call(op, *args):
    """Run ``op``: through the dispatcher while compiling, directly otherwise (see above)."""
    if BYPASS_DISPATCHER and not torch.compiler.is_compiling():
        return _EAGER[op](*args)
    return op(*args)
