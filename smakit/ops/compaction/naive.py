"""Plain-PyTorch reference for compaction: obviously correct, and what CPU tensors run.

Four row movers, each a single ``index_select`` or ``index_copy_`` over feature rows:

* compress forward   gathers rows of ``x`` into slots,
* compress backward  scatters slot gradients back to their tokens (one-to-one),
* extract forward    scatters ``scale * h`` to the tokens (zeros elsewhere),
* extract backward   gathers ``grad_out`` into slots, and reduces it against ``h`` for the
  gradient of the scale.

``index`` is the ``[S]`` flat scatter index of :class:`~smakit.ops.compaction.layout.Compacted`
(padding slots point at ``B * L``, one past the last token, where a dump row absorbs them).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _gather_rows(src: Tensor, index: Tensor, pad: Tensor | None) -> Tensor:
    """``src[index]`` for ``src [R, D]``; rows with ``pad`` True come out zero."""
    rows = src.shape[0]
    if rows == 0:
        return src.new_zeros(index.shape[0], src.shape[1])
    out = src.index_select(0, index.clamp(max=rows - 1))
    if pad is not None:
        out.masked_fill_(pad.unsqueeze(1), 0)
    return out


def _scatter_rows(src: Tensor, index: Tensor, rows: int) -> Tensor:
    """``out [rows, D]`` with ``out[index] = src`` and zeros elsewhere; ``index == rows`` is dropped."""
    out = src.new_zeros(rows + 1, src.shape[1])
    out.index_copy_(0, index, src)
    return out[:rows]


def compress_fwd(x: Tensor, index: Tensor, pad: Tensor | None) -> Tensor:
    """``x [B*L, D]`` -> ``values [S, D]``."""
    return _gather_rows(x, index, pad)


def compress_bwd(grad_values: Tensor, index: Tensor, rows: int) -> Tensor:
    """``grad_values [S, D]`` -> ``grad_x [B*L, D]``."""
    return _scatter_rows(grad_values, index, rows)


def extract_fwd(h: Tensor, scale: Tensor | None, index: Tensor, rows: int) -> Tensor:
    """``h [S, D]``, ``scale [S]`` -> ``out [B*L, D]`` with ``out[index] = scale * h``."""
    src = h if scale is None else h * scale.to(h.dtype).unsqueeze(1)
    return _scatter_rows(src, index, rows)


def extract_bwd(
    grad_out: Tensor, h: Tensor, scale: Tensor | None, index: Tensor, need_scale_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Gradients of :func:`extract_fwd`: ``grad_h [S, D]`` and ``grad_scale [S]`` (fp32)."""
    g = _gather_rows(grad_out, index, None)  # [S, D]
    grad_scale = None
    if need_scale_grad:
        grad_scale = (g * h).sum(1, dtype=torch.float32)
    grad_h = g if scale is None else g.mul_(scale.to(g.dtype).unsqueeze(1))
    return grad_h, grad_scale
