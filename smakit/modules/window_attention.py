"""Exact local attention over a window counted in slot order (:func:`local_attention`).

Behind :func:`smakit.sma` the slots are the routed tokens, so the last ``window`` slots may
span any distance in the original sequence; a relative bias reads the *original* positions.
Everything is computed block-wise in ``O(K * window)``: the slots are split into blocks and
each block attends to itself and its neighbour block(s), masked to the exact window. On a
CPU in eager mode the blocks run through :class:`~smakit.modules._blockwise.BlockwiseAttention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.experimental.symbolic_shapes import guard_or_false, guard_or_true

from .._utils import default, exists
from ._blockwise import BlockwiseAttention
from .position import RelativePositionBias

ATTENTIONS = ("softmax", "relu2")
MAX_TABLE_POSITION = 2**20  # larger positions take the vectorised path, which clamps distances


def _look_around(t: Tensor, block: int, before: int, after: int, fill) -> Tensor:
    """Overlapping windows of ``before + block + after`` rows, one per block, as a view.

    ``t [B, L, ...]`` (``L`` a positive multiple of ``block``) is flattened to ``[B * L, ...]`` rows,
    padded by ``before``/``after`` rows of ``fill`` at the two ends, and unfolded with
    stride ``block`` into ``[B * L / block, before + block + after, ...]``: no copy per
    window, and the backward is one ``unfold_backward``. Windows at a row's edges reach into
    the neighbouring rows, so the caller masks keys outside the query's own row.
    """
    B, L = t.shape[:2]
    flat = t.reshape(B * L, *t.shape[2:])
    if before or after:
        flat = F.pad(flat, [0, 0] * (t.dim() - 2) + [before, after], value=fill)
    span = before + block + after
    if torch.compiler.is_compiling():
        # inductor gets unfold_backward over overlapping windows wrong (gradients off by
        # ~3% while the forward matches, torch 2.13); a gather's backward is an index_add
        n = (flat.shape[0] - span) // block + 1
        index = (torch.arange(n, device=t.device) * block).unsqueeze(1) + torch.arange(span, device=t.device)
        return flat[index]
    return flat.unfold(0, span, block).movedim(-1, 1)


def _blockwise_applies(q: Tensor, k: Tensor, v: Tensor, bias: nn.Module | None, dropout: float,
                       training: bool) -> bool:
    """Whether :class:`BlockwiseAttention` runs: CPU eager, one float dtype, no attention dropout,
    no bias or a per-row :class:`RelativePositionBias` (the vectorised path does the rest)."""
    dtypes = {q.dtype, k.dtype, v.dtype} | ({bias.weight.dtype} if isinstance(bias, RelativePositionBias) else set())
    return (q.device.type == "cpu" and not torch.compiler.is_compiling() and not torch.is_autocast_enabled("cpu")
            and len(dtypes) == 1 and q.dtype in (torch.float32, torch.float64) and not (dropout > 0 and training)
            and (bias is None or isinstance(bias, RelativePositionBias)))


def _slots_are_positions(positions: Tensor, mask: Tensor, q: Tensor) -> bool:
    """Whether every real slot's position is its slot index (CPU eager only: it reads the data)."""
    if q.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    slots = torch.arange(positions.shape[1], device=positions.device, dtype=positions.dtype)
    return bool(((positions == slots) | ~mask).all())


def _mask_value(q: Tensor, k: Tensor) -> float:
    """A finite score that softmax and relu^2 turn into exactly 0, in the dtype the scores use.

    Finite (not -inf) so a padding query whose keys are all masked gets a finite, zeroed row
    instead of NaN; half the dtype's max so adding a score cannot overflow.
    """
    dev = q.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.promote_types(q.dtype, k.dtype)
    return -0.5 * torch.finfo(dtype).max


def _blocking(K, window: int, causal: bool, chunked: bool) -> tuple[int, int, int]:
    """``(block, before, after)``: query block size and neighbour blocks each block attends to.

    The sliding window splits slots into blocks of ``window / 2`` (``window`` when small) and
    gives each query block the keys of ``before + 1 + after`` blocks: ``2.5 * window`` keys
    per query bidirectionally (``3 * window`` with whole-window blocks) for the ``2 * window + 1``
    it may see. When that band is at least ``K`` (short sequences), one dense block of all
    ``K`` slots does less work.
    """
    if chunked:
        return window, 0, 0
    b = window // 2 if window >= 16 else window
    before = -(-window // b)
    after = 0 if causal else before
    if guard_or_false(K >= 1) and guard_or_false(K <= (before + 1 + after) * b):
        return K, 0, 0
    return b, before, after


def _window_span(mask: Tensor, positions: Tensor, window: int, causal: bool, chunked: bool) -> Tensor:
    """``[B, K]`` ``pos[last] - pos[first] + 1`` over each query's valid keys (0 for padding).

    Computed from the first and last real slot of each query's window, in ``O(K)``: the
    positions increase along the slots (as :func:`smakit.sma` gives them).
    """
    B, K = mask.shape
    i = torch.arange(K, device=mask.device)
    if chunked:
        lo = i // window * window
        hi = i if causal else (lo + window - 1).clamp(max=K - 1)
    else:
        lo = (i - window + (1 if causal else 0)).clamp(min=0)
        hi = i if causal else (i + window).clamp(max=K - 1)
    prev_real = torch.where(mask, i, -1).cummax(-1).values  # last real slot <= j
    next_real = torch.where(mask, i, K).flip(-1).cummin(-1).values.flip(-1)  # first real slot >= j
    first = next_real[:, lo].clamp(max=K - 1)
    last = prev_real[:, hi].clamp(min=0)
    return torch.where(mask, positions.gather(1, last) - positions.gather(1, first) + 1, 0)


def local_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    *,
    causal: bool,
    mask: Tensor | None = None,
    positions: Tensor | None = None,
    bias: nn.Module | None = None,
    attention: str = "softmax",
    chunked: bool = False,
    dropout: float = 0.0,
    training: bool = False,
) -> tuple[Tensor, Tensor]:
    """Exact sliding-window (or chunked) attention in slot order, ``O(K * window)``.

    A query in slot ``i`` sees keys in slots ``i - window < j <= i`` (causal) or
    ``|i - j| <= window`` (bidirectional); with ``chunked`` it sees its own block of
    ``window`` slots instead (causal within the block). Padding slots (``mask`` False) are
    never attended to, and padding queries return zeros.

    Queries are split into blocks that each see a band of keys. Without ``positions`` the
    slots are the positions (also detected when ``positions`` equal the slots on every real
    slot, on CPU), so the bias of a slot offset is the same in every block and row: it is
    computed once, ``[block, band]``, and enters the score matmul as ``baddbmm``'s input
    with the out-of-window pairs. Otherwise a
    :class:`~smakit.modules.position.RelativePositionBias` is read per pair from a table of
    every distance. On CPU (eager, float32/64, no attention dropout) a few blocks are
    computed at a time and backward recomputes their scores
    (``BlockwiseAttention`` in ``smakit/modules/_blockwise.py``); elsewhere all blocks at once.
    ``_local_attention_ref`` is the dense ``O(K^2)`` reference.

    Args:
        q, k (Tensor): ``[B, K, S]``; v (Tensor): ``[B, K, E]``.
        window (int): window size in slots.
        causal (bool): causal window.
        mask (Tensor, optional): ``[B, K]`` bool, True = real slot.
        positions (Tensor, optional): ``[B, K]`` original positions (for ``bias`` and the span).
        bias (nn.Module, optional): maps ``pos_q - pos_k`` to an additive score bias.
        attention (str): ``"softmax"`` (scores scaled by ``1/sqrt(S)``) or ``"relu2"``
            (``relu(score)^2 / window``, length-normalised as in Mega/SeqBoat).
        chunked (bool): attend within fixed blocks instead of a sliding window.

    Returns:
        ``(out [B, K, E], span [B, K])``: the span is ``max - min + 1`` of the original
        positions of each query's valid keys (0 for padding queries), detached; it takes
        positions to increase along the slots.
    """
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    B, K, S = q.shape
    E = v.shape[-1]
    w = window
    device = q.device
    shared = positions is None  # slots are the positions: the bias depends on the slot offset alone
    mask = default(mask, torch.ones(B, K, dtype=torch.bool, device=device))
    positions = default(positions, torch.arange(K, device=device).expand(B, K)).int()  # int32: half the traffic
    b, before, after = _blocking(K, w, causal, chunked)
    n = torch.sym_max(-(-K // b), 1)  # at least one (all-padding) block: the unfold needs rows when K == 0
    pad = n * b - K
    if guard_or_true(pad != 0):  # under compile K may be data dependent: pad (maybe by 0)
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        mask = F.pad(mask, (0, pad), value=False)
        positions = F.pad(positions, (0, pad), value=-1)
    span_w = (before + 1 + after) * b  # keys per query block
    fill = _mask_value(q, k)
    # keys that are padding or outside the query's row (the flat band reaches into the neighbouring rows)
    kslot = torch.arange(n, device=device).view(n, 1) * b - before * b + torch.arange(span_w, device=device)  # [n, Kw]
    key_ok = _look_around(mask, b, before * b, after * b, False).view(B, n, span_w) & (kslot >= 0) & (kslot < n * b)
    key_ok = key_ok.view(B * n, span_w)
    # slot pairs outside the window: the same slot offsets in every block
    d = torch.arange(span_w, device=device) - before * b - torch.arange(b, device=device).view(b, 1)  # key - query
    if chunked:
        blocked = d > 0 if causal else torch.zeros_like(d, dtype=torch.bool)
    elif causal:
        blocked = (d > 0) | (d <= -w)
    else:
        blocked = d.abs() > w  # [b, Kw]
    if not shared and exists(bias) and _slots_are_positions(positions, mask, q):
        shared = True  # e.g. behind sma when every row routed all its real tokens
    if shared and exists(bias):  # one [b, Kw] bias for every block of every row
        band = bias(-d).to(q.dtype).masked_fill(blocked, fill)
    else:
        band = torch.zeros(blocked.shape, dtype=q.dtype, device=device).masked_fill_(blocked, fill)
    per_row = exists(bias) and not shared

    blockwise = _blockwise_applies(q, k, v, bias if per_row else None, dropout, training)
    if blockwise and per_row:
        P = int(positions.max()) + 1  # positions (-1 on padding) are in [-1, P)
        blockwise = P <= MAX_TABLE_POSITION  # the distance table has 3P + 2 entries
    if blockwise:
        rows = lambda t: F.pad(t.reshape(B * n * b, *t.shape[2:]), (0, 0, before * b, after * b))  # noqa: E731
        table = qpos = kpos = key_add = None
        if per_row:  # index a table of every distance directly: no clamp, and masked keys read `fill`
            table = bias.distance_table().index_select(0, (torch.arange(-P, P + 1, device=device)
                                                           + bias.max_distance).clamp_(0, 2 * bias.max_distance))
            table = torch.cat((table.new_full((P + 1,), fill), table))  # [3P + 2]: fill, then distances -P..P
            qpos = positions.view(B * n, b) + (2 * P + 1)  # index of pos_q - pos_k is pos_q - pos_k + 2P + 1
            kpos = _look_around(positions, b, before * b, after * b, -1).masked_fill(~key_ok, 2 * P)  # -> [0, P]
        else:
            key_add = torch.zeros(key_ok.shape, dtype=k.dtype, device=device).masked_fill_(~key_ok, fill)
        out = BlockwiseAttention.apply(q.reshape(B * n, b, S), rows(k), rows(v), key_add, band, table, qpos, kpos,
                                       before + 1 + after, attention, w).view(B, n * b, E)
    else:
        kk, vv = (_look_around(t, b, before * b, after * b, 0.0) for t in (k, v))  # [B*n, Kw, S|E] views
        add = band.expand(B * n, b, span_w)
        if per_row:
            qpos, kpos = positions.view(B * n, b, 1), _look_around(positions, b, before * b, after * b, -1)
            if isinstance(bias, RelativePositionBias):
                add = add + bias.masked(qpos, kpos.unsqueeze(1), blocked, 0.0).to(add.dtype)
            else:
                add = add + bias(qpos - kpos.unsqueeze(1)).to(add.dtype)
        scores = torch.baddbmm(add, q.reshape(B * n, b, S), kk.transpose(1, 2), alpha=1 / math.sqrt(S))
        scores = scores.masked_fill(~key_ok.unsqueeze(1), fill)
        if attention == "softmax":
            weights = scores.softmax(-1)
        else:
            weights = F.relu(scores).square() / w
        if dropout > 0 and training:
            weights = F.dropout(weights, dropout, training=True)
        out = torch.bmm(weights.to(vv.dtype), vv).view(B, n * b, E)
    out = out * mask.unsqueeze(-1).to(out.dtype)  # padding queries (all keys masked): zeros
    out = out[:, :K]
    with torch.no_grad():
        span = _window_span(mask[:, :K], positions[:, :K], w, causal, chunked).long()
    return out, span


def _local_attention_ref(q: Tensor, k: Tensor, v: Tensor, window: int, *, causal: bool, mask: Tensor | None = None,
                         positions: Tensor | None = None, bias: nn.Module | None = None, attention: str = "softmax",
                         chunked: bool = False) -> Tensor:
    """Dense ``O(K^2)`` reference of :func:`local_attention` (output only): the window as a full mask."""
    B, K, S = q.shape
    mask = default(mask, torch.ones(B, K, dtype=torch.bool, device=q.device))
    positions = default(positions, torch.arange(K, device=q.device).expand(B, K))
    s = q @ k.transpose(1, 2) / math.sqrt(S)
    if exists(bias):
        s = s + bias(positions[:, :, None] - positions[:, None, :])
    i = torch.arange(K, device=q.device)
    d = i[None, :] - i[:, None]  # key slot - query slot
    if chunked:
        allowed = (i[None, :] // window) == (i[:, None] // window)
        if causal:
            allowed &= d <= 0
    elif causal:
        allowed = (d <= 0) & (d > -window)
    else:
        allowed = d.abs() <= window
    valid = allowed & mask[:, None, :]
    if attention == "softmax":
        wts = s.masked_fill(~valid, torch.finfo(s.dtype).min).softmax(-1) * valid.any(-1, keepdim=True)
    else:
        wts = torch.relu(s).square().masked_fill(~valid, 0) / window
    return (wts @ v) * mask.unsqueeze(-1)
