"""Local attention over query blocks, a few blocks at a time, recomputing the scores in backward.

The CPU path of :func:`smakit.modules.local_attention`. The vectorised path materialises
every block's ``[b, Kw]`` scores, weights and bias at once and autograd keeps them for
backward: at B=32, L=1K that is ~40 MB a tensor, which glibc maps and unmaps on every
allocation (hundreds of thousands of page faults a step). Here a chunk of blocks is small
enough to stay in cache, backward recomputes its scores (as flash attention does), and
only ``q``, ``k``, ``v`` and the small bias tables are saved. The vectorised path is the
reference (``tests/test_speed_paths.py`` compares forward and every gradient).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CHUNK_ELEMS = 2**17  # score entries per chunk: 512 KB in float32, about an L2 cache


def _table_grad_rows(chunk: int) -> int:
    """Partial bias-table gradients in backward, one per thread (at most one per block of a chunk).

    One table takes ``index_add_`` (int32 indices, one thread; the fastest on one thread);
    ``R > 1`` tables take ``scatter_add_`` into ``[R, T]`` (int64 indices), whose rows run
    in parallel, and the gather that recomputes the bias becomes a row-parallel ``gather``.
    """
    return max(1, min(torch.get_num_threads(), chunk))


def _windows(t: Tensor, g0: int, g1: int, b: int, Kw: int) -> Tensor:
    """Key windows of blocks ``g0..g1-1`` of the flat padded ``t [(N + nb - 1) * b, ...]`` as a view."""
    return t[g0 * b:(g1 - 1) * b + Kw].unfold(0, Kw, b).movedim(-1, 1)


def _scores(ctx, g0: int, g1: int, q: Tensor, k: Tensor, key_add: Tensor | None, band: Tensor,
            table: Tensor | None, qpos: Tensor | None, kpos: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``[G, b, Kw]`` scores of one chunk (and its bias-table index when the bias is per row)."""
    b, Kw, S = ctx.b, ctx.Kw, q.shape[-1]
    G = g1 - g0
    idx = None
    # the additive terms first, then the product accumulates into them in place (baddbmm_):
    # one pass fewer over the chunk than baddbmm's copy of its input followed by an add
    if table is not None:  # per-row bias (masked keys read the table's fill entries)
        idx = qpos[g0:g1].unsqueeze(-1) - kpos[g0:g1].unsqueeze(1)
        if idx.dtype == torch.int64:  # row-parallel gather from the table broadcast over the blocks
            s = table.expand(G, -1).gather(1, idx.view(G, b * Kw)).view(G, b, Kw).add_(band)
        else:  # int32: index_select (one thread, half the index traffic)
            s = table.index_select(0, idx.flatten()).view(G, b, Kw).add_(band)
    else:
        s = torch.add(key_add[g0:g1].unsqueeze(1), band)
    s.baddbmm_(q[g0:g1], _windows(k, g0, g1, b, Kw).transpose(1, 2), alpha=1 / math.sqrt(S))
    return s, idx


class BlockwiseAttention(torch.autograd.Function):
    """``out [N, b, E]`` of ``N`` query blocks, each attending to its window of ``Kw = nb * b`` keys.

    Inputs: ``q [N, b, S]``; ``k [(N + nb - 1) * b, S]`` and ``v [..., E]``, the flat padded
    keys and values (block ``g`` sees rows ``g * b ... g * b + Kw - 1``); ``band [b, Kw]``,
    the additive score of each slot offset (the same in every block). Then either
    ``key_add [N, Kw]`` (0 or a large negative value per key, no gradient), or a per-row
    bias ``table[qpos[g, i] - kpos[g, j]]`` (``qpos [N, b]``, ``kpos [N, Kw]``, offset so
    every index is in the table and masked keys read a large negative entry).
    """

    @staticmethod
    def forward(ctx, q, k, v, key_add, band, table, qpos, kpos, nb: int, attention: str, window: int):
        N, b, _ = q.shape
        ctx.b, ctx.Kw, ctx.attention, ctx.window = b, nb * b, attention, window
        # more threads: bigger chunks, so each op's parallel region has enough work
        ctx.chunk = max(1, CHUNK_ELEMS * torch.get_num_threads() // (b * ctx.Kw))
        out = v.new_empty(N, b, v.shape[-1])
        for g0 in range(0, N, ctx.chunk):
            g1 = min(g0 + ctx.chunk, N)
            s, _ = _scores(ctx, g0, g1, q, k, key_add, band, table, qpos, kpos)
            p = s.softmax(-1) if attention == "softmax" else s.relu_().square_().div_(window)
            torch.bmm(p, _windows(v, g0, g1, b, ctx.Kw), out=out[g0:g1])
        ctx.save_for_backward(q, k, v, key_add, band, table, qpos, kpos)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, key_add, band, table, qpos, kpos = ctx.saved_tensors
        b, Kw, w = ctx.b, ctx.Kw, ctx.window
        nb, N, alpha = Kw // b, q.shape[0], 1 / math.sqrt(q.shape[-1])
        dout = dout.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dk_blocks, dv_blocks = dk.view(-1, b, k.shape[-1]), dv.view(-1, b, v.shape[-1])
        dband = torch.zeros_like(band) if ctx.needs_input_grad[4] else None
        dtable = None
        if table is not None and ctx.needs_input_grad[5]:
            R = _table_grad_rows(ctx.chunk)
            dtable = table.new_zeros(R, table.numel())  # [R, T] partial sums, added up at the end
            if R > 1:  # scatter_add_ takes int64 indices: widen the small position tensors once
                qpos, kpos = qpos.long(), kpos.long()
        for g0 in range(0, N, ctx.chunk):
            g1 = min(g0 + ctx.chunk, N)
            s, idx = _scores(ctx, g0, g1, q, k, key_add, band, table, qpos, kpos)
            do, vw = dout[g0:g1], _windows(v, g0, g1, b, Kw)
            dp = torch.bmm(do, vw.transpose(1, 2))  # [G, b, Kw]
            if ctx.attention == "softmax":
                p = s.softmax(-1)
                ds = torch._softmax_backward_data(dp, p, -1, p.dtype)
            else:
                r = s.relu_()
                p = r.square() / w
                ds = dp.mul_(r).mul_(2 / w)
            dvw, dkw = torch.bmm(p.transpose(1, 2), do), torch.bmm(ds.transpose(1, 2), q[g0:g1])  # [G, Kw, E|S]
            for j in range(nb):  # the windows overlap: each key block gets nb contributions
                dv_blocks[g0 + j:g1 + j] += dvw[:, j * b:(j + 1) * b]
                dk_blocks[g0 + j:g1 + j] += dkw[:, j * b:(j + 1) * b]
            torch.bmm(ds, _windows(k, g0, g1, b, Kw), out=dq[g0:g1])
            if dband is not None:
                dband += ds.sum(0)
            if dtable is not None and dtable.shape[0] == 1:
                dtable[0].index_add_(0, idx.flatten(), ds.flatten())
            elif dtable is not None:  # R rows, each a contiguous run of the chunk's blocks (one row if uneven)
                R = dtable.shape[0] if (g1 - g0) % dtable.shape[0] == 0 else 1
                dtable[:R].scatter_add_(1, idx.view(R, -1), ds.view(R, -1))
        if dtable is not None:
            dtable = dtable.sum(0)
        return dq.mul_(alpha), dk.mul_(alpha), dv, None, dband, dtable, None, None, None, None, None
