"""Triton kernels for compaction: one fused pass each way, near the memory-bandwidth limit.

Three kernels move every feature row exactly once:

* ``_compress_fwd_kernel`` (token-major): each program takes a chunk of one row's tokens,
  finds its first slot by summing the row's ``active`` flags before the chunk, then a
  running prefix sum gives each active token's slot; it writes the compacted values, the
  original positions, the mask, the scatter index, the kept flags and the counts, and
  zeroes its share of the padding slots. No ``nonzero``/``cumsum``/``index_select``.
* ``_scatter_rows_kernel`` (token-major): ``dst[token] = gate[token] * src[slot]`` for kept
  tokens and exact zeros elsewhere; it is both the compress backward (no gate) and the
  extract forward (gate fused).
* ``_gather_rows_kernel`` (slot-major): ``dst[slot] = gate[token] * src[token]`` (zeros on
  padding) and, when asked, ``grad_gate[token] = <src[token], h[slot]>`` in the same pass;
  it is the extract backward and the forward of :func:`compact_like`.

The launchers :func:`compress_fwd`, :func:`scatter_rows` and :func:`gather_rows` have the
signatures of ``naive.py``'s (the inputs are validated by the public functions);
``custom_ops.py`` registers them as ``torch.library`` ops. Offsets are int64, every
load/store is masked (any ``D``). Gate products and dot products run in float32 (float64
for float64 data). CPU tensors run only under the interpreter (``TRITON_INTERPRET=1`` set
before this module is imported), which the tests use; :data:`INTERPRET` is the one place
that reads it.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# GPU: [BLOCK_L, BLOCK_D] tiles of 4-8K elements (16-byte vectors per thread); the
# interpreter gets tiny tiles so the tests cross every tile and chunk boundary.
if INTERPRET:
    _TOKEN_CONFIGS = [triton.Config({"BLOCK_L": 8, "BLOCK_D": 16, "BLOCK_P": 16}, num_warps=1)]
    _SLOT_CONFIGS = [triton.Config({"BLOCK_S": 8, "BLOCK_D": 16}, num_warps=1)]
else:
    _TOKEN_CONFIGS = [
        triton.Config({"BLOCK_L": bl, "BLOCK_D": bd, "BLOCK_P": 1024}, num_warps=w)
        for bl, bd, w in [(16, 256, 4), (32, 256, 8), (8, 512, 4), (16, 512, 8), (4, 1024, 8), (64, 64, 4)]
    ]
    _SLOT_CONFIGS = [
        triton.Config({"BLOCK_S": bs, "BLOCK_D": bd}, num_warps=w)
        for bs, bd, w in [(16, 256, 4), (32, 256, 8), (8, 512, 4), (16, 512, 8), (4, 1024, 8), (64, 64, 4)]
    ]


def usable_on(device: torch.device) -> bool:
    """Whether these kernels can run on tensors of ``device``."""
    return device.type == "cuda" or (INTERPRET and device.type == "cpu")


def _target_programs(device: torch.device) -> int:
    """Programs to spread the token-major kernels over (a few per SM)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 6


def _chunking(B: int, L: int, device: torch.device, row_bytes: int) -> tuple[int, int]:
    """``(CHUNK, NUM_CHUNKS)``: tokens per program along a row, and programs per row.

    Each program re-reads its row's ``active`` flags (``L`` bytes, from L2) to find its first
    slot, so rows are split only as far as needed to fill the device, and no further than
    keeps those re-reads a small fraction of the feature bytes (``row_bytes`` per token).
    """
    per_row = max(1, -(-_target_programs(device) // max(B, 1)))
    per_row = min(per_row, max(8, row_bytes // 4))
    chunk = max(-(-L // per_row), 1)
    if device.type == "cuda":
        chunk = max(chunk, 64)
    return chunk, max(-(-L // chunk), 1)


def _acc_dtype(t: Tensor):
    """What the kernels multiply and sum ``t``'s elements in."""
    return tl.float64 if t.dtype == torch.float64 else tl.float32


# kernels


@triton.jit
def _count_flags(row_ptr, start, stop, BLOCK_P: tl.constexpr):
    """``(flags before start, flags before stop)`` of one row of uint8 flags, ``start <= stop``."""
    before = tl.zeros([], tl.int32)
    total = tl.zeros([], tl.int32)
    for p0 in range(0, stop, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        a = tl.load(row_ptr + offs_p, mask=offs_p < stop, other=0).to(tl.int32)  # [BP]
        total += tl.sum(a, 0)
        before += tl.sum(tl.where(offs_p < start, a, 0), 0)
    return before, total


@triton.autotune(configs=_TOKEN_CONFIGS, key=["D"])
@triton.jit(do_not_specialize=["L", "K", "ROWS", "CHUNK", "NUM_CHUNKS", "KCHUNK"])
def _compress_fwd_kernel(
    x_ptr, active_ptr, row_start_ptr,
    values_ptr, positions_ptr, mask_ptr, scatter_ptr, batch_ptr, kept_ptr, counts_ptr,
    L, D, K, ROWS, CHUNK, NUM_CHUNKS, KCHUNK, stride_xb, stride_xl,
    FLAT: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // NUM_CHUNKS
    c = pid % NUM_CHUNKS
    b64 = b.to(tl.int64)
    start = c * CHUNK
    act_row = active_ptr + b64 * L
    prefix, total = _count_flags(act_row, start, L, BLOCK_P)  # active tokens before the chunk, in the row
    if FLAT:
        base = tl.load(row_start_ptr + b).to(tl.int64)
    else:
        base = b64 * K
    offs_d0 = tl.arange(0, BLOCK_D)
    run = prefix
    end = tl.minimum(start + CHUNK, L)
    for l0 in range(start, end, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)  # [BL]
        in_row = offs_l < end
        a = tl.load(act_row + offs_l, mask=in_row, other=0).to(tl.int32)
        slot = run + tl.cumsum(a, 0) - 1
        keep = (a > 0) & (slot < K)
        run += tl.sum(a, 0)
        out = base + slot.to(tl.int64)  # [BL] output row of each kept token
        tok = b64 * L + offs_l.to(tl.int64)
        tl.store(kept_ptr + tok, keep.to(tl.uint8), mask=in_row)
        tl.store(positions_ptr + out, offs_l.to(tl.int64), mask=keep)
        tl.store(mask_ptr + out, tl.full([BLOCK_L], 1, tl.uint8), mask=keep)
        tl.store(scatter_ptr + out, tok, mask=keep)
        if FLAT:
            tl.store(batch_ptr + out, tl.zeros([BLOCK_L], tl.int64) + b64, mask=keep)
        src = x_ptr + b64 * stride_xb + offs_l.to(tl.int64)[:, None] * stride_xl
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + offs_d0
            m = keep[:, None] & (offs_d < D)[None, :]
            v = tl.load(src + offs_d[None, :], mask=m)  # [BL, BD]
            tl.store(values_ptr + out[:, None] * D + offs_d[None, :], v, mask=m)
    cnt = tl.minimum(total, K)
    if c == 0:
        tl.store(counts_ptr + b, cnt.to(tl.int64))
    if not FLAT:
        # this program's share of the padding slots [cnt, K)
        p_end = tl.minimum((c + 1) * KCHUNK, K)
        for s0 in range(tl.maximum(c * KCHUNK, cnt), p_end, BLOCK_L):
            offs_s = s0 + tl.arange(0, BLOCK_L)
            sm = offs_s < p_end
            out = b64 * K + offs_s.to(tl.int64)
            tl.store(positions_ptr + out, tl.full([BLOCK_L], -1, tl.int64), mask=sm)
            tl.store(mask_ptr + out, tl.zeros([BLOCK_L], tl.uint8), mask=sm)
            tl.store(scatter_ptr + out, tl.zeros([BLOCK_L], tl.int64) + ROWS, mask=sm)
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + offs_d0
                m = sm[:, None] & (offs_d < D)[None, :]
                zero = tl.zeros([BLOCK_L, BLOCK_D], tl.float32).to(values_ptr.dtype.element_ty)
                tl.store(values_ptr + out[:, None] * D + offs_d[None, :], zero, mask=m)


@triton.autotune(configs=_TOKEN_CONFIGS, key=["D"])
@triton.jit(do_not_specialize=["L", "K", "CHUNK", "NUM_CHUNKS"])
def _scatter_rows_kernel(
    src_ptr, kept_ptr, row_start_ptr, gate_ptr, dst_ptr,
    L, D, K, CHUNK, NUM_CHUNKS,
    FLAT: tl.constexpr, HAS_GATE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // NUM_CHUNKS
    c = pid % NUM_CHUNKS
    b64 = b.to(tl.int64)
    start = c * CHUNK
    kept_row = kept_ptr + b64 * L
    prefix, _ = _count_flags(kept_row, start, start, BLOCK_P)
    if FLAT:
        base = tl.load(row_start_ptr + b).to(tl.int64)
    else:
        base = b64 * K
    offs_d0 = tl.arange(0, BLOCK_D)
    run = prefix
    end = tl.minimum(start + CHUNK, L)
    for l0 in range(start, end, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)  # [BL]
        in_row = offs_l < end
        a = tl.load(kept_row + offs_l, mask=in_row, other=0).to(tl.int32)
        slot = run + tl.cumsum(a, 0) - 1
        keep = a > 0
        run += tl.sum(a, 0)
        src = src_ptr + (base + slot.to(tl.int64))[:, None] * D
        tok = b64 * L + offs_l.to(tl.int64)
        if HAS_GATE:
            g = tl.load(gate_ptr + tok, mask=keep, other=0).to(ACC)  # [BL]
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + offs_d0
            dm = (offs_d < D)[None, :]
            v = tl.load(src + offs_d[None, :], mask=keep[:, None] & dm, other=0)  # [BL, BD]
            if HAS_GATE:
                v = (v.to(ACC) * g[:, None]).to(v.dtype)
            tl.store(dst_ptr + tok[:, None] * D + offs_d[None, :], v, mask=in_row[:, None] & dm)


@triton.autotune(configs=_SLOT_CONFIGS, key=["D", "HAS_GATE", "NEED_DOT"])
@triton.jit(do_not_specialize=["S", "ROWS"])
def _gather_rows_kernel(
    src_ptr, index_ptr, gate_ptr, h_ptr, dst_ptr, grad_gate_ptr,
    S, D, ROWS,
    HAS_GATE: tl.constexpr, NEED_DOT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    offs_s = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)  # [BS]
    sm = offs_s < S
    idx = tl.load(index_ptr + offs_s, mask=sm, other=ROWS)
    valid = idx < ROWS  # padding slots point one past the last token
    if HAS_GATE:
        g = tl.load(gate_ptr + idx, mask=valid, other=0).to(ACC)
    acc = tl.zeros([BLOCK_S], ACC)
    offs_d0 = tl.arange(0, BLOCK_D)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + offs_d0
        dm = (offs_d < D)[None, :]
        v = tl.load(src_ptr + idx[:, None] * D + offs_d[None, :], mask=valid[:, None] & dm, other=0)  # [BS, BD]
        if NEED_DOT:
            hv = tl.load(h_ptr + offs_s[:, None] * D + offs_d[None, :], mask=valid[:, None] & dm, other=0)
            acc += tl.sum(v.to(ACC) * hv.to(ACC), 1)
        if HAS_GATE:
            v = (v.to(ACC) * g[:, None]).to(v.dtype)
        tl.store(dst_ptr + offs_s[:, None] * D + offs_d[None, :], v, mask=sm[:, None] & dm)
    if NEED_DOT:
        tl.store(grad_gate_ptr + idx, acc, mask=valid)


# launchers (same signatures as naive.py's)


def _bytes(t: Tensor) -> Tensor:
    """A bool tensor seen as uint8 (what the kernels load and store)."""
    return t.view(torch.uint8)


def _row_start(counts: Tensor) -> Tensor:
    return counts.cumsum(0) - counts


def compress_fwd(x: Tensor, active: Tensor, slots: int, flat: bool) -> tuple[Tensor, ...]:
    """Fused compaction of ``x [B, L, D]`` by ``active [B, L]``; see ``naive.compress_fwd``.

    ``slots`` ``0`` sizes the output from the data, which costs one host sync.
    """
    B, L, D = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    active = active.contiguous()
    dev = x.device
    row_start = None
    if flat:
        counts = active.sum(1)
        if slots:
            counts = counts.clamp_(max=slots)
        row_start = _row_start(counts)
        S = int(counts.sum())  # host sync: N
        K = slots if slots else max(L, 1)  # per-row cap
        lead = (S,)
    else:
        K = slots if slots else max(int(active.sum(1).max()) if B * L else 0, 1)  # host sync
        S, lead = B * K, (B, K)
    values = x.new_empty(*lead, D)
    positions = torch.empty(lead, dtype=torch.int64, device=dev)
    mask = torch.empty(lead, dtype=torch.bool, device=dev)
    scatter = torch.empty(S, dtype=torch.int64, device=dev)
    batch = torch.empty(S if flat else 0, dtype=torch.int64, device=dev)
    kept = torch.empty(B, L, dtype=torch.bool, device=dev)
    counts_out = torch.zeros(B, dtype=torch.int64, device=dev)
    if B * L > 0:
        chunk, num_chunks = _chunking(B, L, dev, D * x.element_size())
        _compress_fwd_kernel[(B * num_chunks,)](
            x, _bytes(active), row_start if flat else counts_out,
            values, positions, _bytes(mask), scatter, batch, _bytes(kept), counts_out,
            L, D, K, B * L, chunk, num_chunks, -(-K // num_chunks), x.stride(0), x.stride(1),
            FLAT=flat,
        )
    elif not flat:  # no tokens: the K=1 slot of each row is padding
        values.zero_(), positions.fill_(-1), mask.zero_(), scatter.fill_(B * L)
    return values, positions, mask, counts_out, scatter, batch, kept


def scatter_rows(src: Tensor, gate: Tensor | None, kept: Tensor, counts: Tensor, scatter_index: Tensor,
                 K: int, flat: bool) -> Tensor:
    """``src [S, D]`` slots -> ``[B*L, D]``: ``gate[t] * src[slot(t)]`` at kept tokens, zeros elsewhere.

    Token-major: each token finds its slot from ``kept`` (padded: row ``b`` at ``b * K``; flat:
    rows back to back, ``counts`` long), so ``scatter_index`` is not read.
    """
    B, L = kept.shape
    D = src.shape[-1]
    src = src.reshape(-1, D).contiguous()
    dst = src.new_empty(B * L, D)
    if B * L == 0 or D == 0:
        return dst.zero_()
    chunk, num_chunks = _chunking(B, L, src.device, D * src.element_size())
    row_start = _row_start(counts) if flat else counts
    _scatter_rows_kernel[(B * num_chunks,)](
        src, _bytes(kept.contiguous()), row_start, gate.contiguous() if gate is not None else src, dst,
        L, D, K, chunk, num_chunks, FLAT=flat, HAS_GATE=gate is not None, ACC=_acc_dtype(src),
    )
    return dst


def gather_rows(src: Tensor, gate: Tensor | None, h: Tensor | None, scatter_index: Tensor) -> tuple[Tensor, Tensor]:
    """``src [R, D]`` tokens -> ``dst [S, D]`` (``gate[t] * src[t]``, zeros on padding) and, with
    ``h [S, D]``, ``dot [R]`` (``<src[t], h[slot(t)]>`` per token in at least float32; else empty)."""
    rows, D = src.shape
    S = scatter_index.shape[0]
    src = src.contiguous()
    dst = src.new_empty(S, D)
    acc = torch.promote_types(src.dtype, torch.float32)
    dot = src.new_zeros(rows if h is not None else 0, dtype=acc)
    if S == 0 or D == 0:
        return dst.zero_(), dot
    if h is not None:
        h = h.reshape(S, D).contiguous()
    _gather_rows_kernel[lambda meta: (triton.cdiv(S, meta["BLOCK_S"]),)](
        src, scatter_index.contiguous(), gate.reshape(-1).contiguous() if gate is not None else src,
        h if h is not None else src, dst, dot if h is not None else src,
        S, D, rows, HAS_GATE=gate is not None, NEED_DOT=h is not None, ACC=_acc_dtype(src),
    )
    return dst, dot
