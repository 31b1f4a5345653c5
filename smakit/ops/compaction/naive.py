"""Plain-PyTorch compaction: the ``"torch"`` backend and the whole-op reference the tests trust.

Backend (same functions and signatures as ``triton.py``; ``custom_ops.py`` calls one or the
other):

* :func:`compress_fwd` ``x [B, L, D]``, ``active [B, L]`` -> values and index tensors
  (:func:`build_index`, then one row gather),
* :func:`scatter_rows` slots -> tokens, ``dst[t] = gate[t] * src[slot(t)]``, zeros elsewhere
  (compress backward, extract forward),
* :func:`gather_rows`  tokens -> slots, ``dst[s] = gate[t] * src[t]`` for the slot's token
  ``t``, zeros on padding, and optionally ``<src[t], h[s]>`` per token (``compact_like``
  forward, extract backward).

``scatter_index [S]`` maps each slot to its token in ``[0, B*L)``; padding slots point at
``B * L``, one past the last token, where a dump row absorbs them.

Whole-op reference: :func:`compress_reference` and :func:`extract_reference` compute the
public ops from scratch with differentiable PyTorch (a stable sort instead of the prefix sums,
``gather``/``scatter`` instead of the flat index), so they check both backends, forward and
gradients of any order, without sharing their bookkeeping.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# backend


def build_index(active: Tensor, slots: int, flat: bool) -> tuple[Tensor, ...]:
    """Slot bookkeeping: ``(positions, mask, counts, scatter_index, batch_index, kept)``.

    ``slots``: slots per row (tokens past a row's ``slots``-th active one are dropped);
    ``0`` sizes it from the data: padded ``K`` = the longest row, at least 1 (one host sync),
    flat no limit. ``batch_index`` is empty in the padded layout.
    """
    B, L = active.shape
    device = active.device
    slot = active.cumsum(1) - 1  # [B, L] slot of each active token
    kept = active & (slot < slots) if slots else active.clone()
    counts = kept.sum(1)
    if flat:
        scatter_index = kept.reshape(-1).nonzero().squeeze(1)
        positions = scatter_index % max(L, 1)
        batch_index = scatter_index // max(L, 1)
        return positions, torch.ones_like(scatter_index, dtype=torch.bool), counts, scatter_index, batch_index, kept
    K = slots or max(int(counts.max()) if B * L > 0 else 0, 1)
    # scatter each kept token's position into its slot; the rest go to a dump column K
    target = torch.where(kept, slot, K)
    positions = torch.full((B, K + 1), -1, dtype=torch.long, device=device)
    positions.scatter_(1, target, torch.arange(L, device=device).expand(B, L))
    positions = positions[:, :K].contiguous()
    mask = positions >= 0
    row_start = torch.arange(B, device=device).unsqueeze(1) * L
    scatter_index = torch.where(mask, positions + row_start, B * L).reshape(-1)
    return positions, mask, counts, scatter_index, scatter_index.new_empty(0), kept


def _pick(src: Tensor, index: Tensor) -> Tensor:
    """``src[index]`` for ``src [R, D]``; rows where ``index == R`` (padding) come out zero."""
    rows = src.shape[0]
    if rows == 0:
        return src.new_zeros(index.shape[0], src.shape[1])
    out = src.index_select(0, index.clamp(max=rows - 1))
    pad = index >= rows
    if src.device.type == "cpu":  # zero the few padding rows by index: ~10x faster than a masked pass
        return out.index_fill_(0, pad.nonzero().squeeze(1), 0)  # (nonzero syncs on GPUs, not on CPU)
    return out.masked_fill_(pad.unsqueeze(1), 0)


def compress_fwd(x: Tensor, active: Tensor, slots: int, flat: bool) -> tuple[Tensor, ...]:
    """``(values, positions, mask, counts, scatter_index, batch_index, kept)``.

    Padded: ``values [B, K, D]``, ``positions``/``mask`` ``[B, K]``, ``batch_index`` empty.
    Flat: ``values [N, D]``, ``positions``/``mask``/``batch_index`` ``[N]``. Both:
    ``counts [B]``, ``scatter_index [S]``, ``kept [B, L]`` (the active tokens that got a slot).
    """
    B, L, D = x.shape
    positions, mask, counts, scatter_index, batch_index, kept = build_index(active, slots, flat)
    values = _pick(x.reshape(B * L, D), scatter_index).view(*positions.shape, D)
    return values, positions, mask, counts, scatter_index, batch_index, kept


def scatter_rows(src: Tensor, gate: Tensor | None, kept: Tensor, counts: Tensor, scatter_index: Tensor,
                 K: int, flat: bool) -> Tensor:
    """``src [S, D]`` slots -> ``[B*L, D]``: ``gate[t] * src[slot(t)]`` at kept tokens, zeros elsewhere."""
    rows = kept.numel()
    if gate is not None:  # gated (extract): the product lands in a slot buffer with a zero dump row, and
        # each token reads its row back; no [B*L, D] zero fill and no product temporary (~1.5x faster)
        S, D = src.shape
        ext = src.new_empty(S + 1, D)
        ext[S] = 0
        torch.mul(src, _pick(gate.reshape(rows, 1), scatter_index).to(src.dtype), out=ext[:S])
        return ext.index_select(0, _token_slots(kept, K, flat, S))
    out = src.new_zeros(rows + 1, src.shape[1])
    return out.index_copy_(0, scatter_index, src)[:rows]


def _token_slots(kept: Tensor, K: int, flat: bool, S: int) -> Tensor:
    """``[B*L]`` slot of each token (``S``, the dump row, for a token without one): the inverse of
    ``scatter_index``, from the kept flags (slots are filled in token order)."""
    if flat:
        slot = kept.reshape(-1).cumsum(0) - 1
    else:
        slot = kept.cumsum(1) - 1 + torch.arange(kept.shape[0], device=kept.device).unsqueeze(1) * K
    return torch.where(kept.reshape(-1), slot.reshape(-1), S)


def gather_rows(src: Tensor, gate: Tensor | None, h: Tensor | None, scatter_index: Tensor) -> tuple[Tensor, Tensor]:
    """``src [R, D]`` tokens -> ``dst [S, D]`` (``gate[t] * src[t]``, zeros on padding) and, with
    ``h [S, D]``, ``dot [R]`` (``<src[t], h[slot(t)]>`` per token in at least float32; else empty)."""
    rows = src.shape[0]
    acc = torch.promote_types(src.dtype, torch.float32)
    g = _pick(src, scatter_index)  # [S, D]
    dot = src.new_empty(0, dtype=acc)
    if h is not None:
        if g.dtype == h.dtype == acc:  # one batched product: ~3x faster than a product and a row sum
            d = torch.bmm(g.unsqueeze(1), h.unsqueeze(2)).view(-1)
        else:
            d = (g * h).sum(1, dtype=acc)
        dot = src.new_zeros(rows + 1, dtype=acc).index_copy_(0, scatter_index, d)[:rows]
    if gate is not None:  # in place is safe: g is ours and never part of an autograd graph
        g.mul_(_pick(gate.reshape(rows, 1), scatter_index).to(g.dtype))
    return g, dot


# whole-op reference (plain autograd)


def _slot_tokens(kept: Tensor, K: int) -> Tensor:
    """``[B, K]`` token of each padded slot, in order; ``L`` on padding slots."""
    B, L = kept.shape
    order = torch.sort((~kept).to(torch.int32), dim=1, stable=True).indices  # kept tokens first
    order = torch.cat([order, order.new_full((B, K), L)], 1)[:, :K]
    filled = torch.arange(K, device=kept.device) < kept.sum(1, keepdim=True)
    return torch.where(filled, order, L)


def compress_reference(x: Tensor, active: Tensor, slots: int | None = None, flat: bool = False) -> dict:
    """:func:`~smakit.ops.compress` from scratch: ``values``, ``positions``, ``mask``, ``counts``,
    ``batch_index`` (flat) and ``kept``, differentiable in ``x``."""
    B, L, D = x.shape
    kept = active & (active.long().cumsum(1) <= slots) if slots else active
    counts = kept.sum(1)
    if flat:
        b, pos = kept.nonzero(as_tuple=True)
        return {"values": x[b, pos], "positions": pos, "mask": torch.ones_like(pos, dtype=torch.bool),
                "counts": counts, "batch_index": b, "kept": kept}
    K = slots or max(int(counts.max()) if B * L > 0 else 0, 1)
    tokens = _slot_tokens(kept, K)
    values = F.pad(x, (0, 0, 0, 1)).gather(1, tokens.unsqueeze(-1).expand(B, K, D))  # token L is a zero row
    mask = tokens < L
    return {"values": values, "positions": torch.where(mask, tokens, -1), "mask": mask,
            "counts": counts, "batch_index": None, "kept": kept}


def extract_reference(h: Tensor, kept: Tensor, gate: Tensor | None = None, flat: bool = False) -> Tensor:
    """:func:`~smakit.ops.extract` from scratch: ``h [B, K, D']`` or ``[N, D']`` -> ``[B, L, D']``,
    ``gate * h`` at the kept tokens and zeros elsewhere, differentiable in ``h`` and ``gate``."""
    B, L = kept.shape
    if flat:
        b, pos = kept.nonzero(as_tuple=True)
        src = h if gate is None else h * gate[b, pos].unsqueeze(1).to(h.dtype)
        return h.new_zeros(B, L, h.shape[-1]).index_put((b, pos), src)
    slots = _slot_tokens(kept, h.shape[1])
    if gate is not None:
        h = h * F.pad(gate, (0, 1)).gather(1, slots).unsqueeze(-1).to(h.dtype)
    out = h.new_zeros(B, L + 1, h.shape[-1]).scatter(1, slots.unsqueeze(-1).expand_as(h), h)
    return out[:, :L]  # padding slots landed in the dropped column L
