"""Data parallelism for the training loop: the same script runs alone or under ``torchrun``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # setup() started the process group, so teardown() ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> DistContext:
    """Join the process group when launched by ``torchrun`` (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = parse_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = world > 1 and not tdist.is_initialized()
    if owns:
        tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank, world, local, dev, owns)


def teardown(ctx: DistContext, clean: bool = True) -> None:
    """End the process group :func:`setup` started (a group the caller made is left alone).

    ``clean``: every rank finished, so a barrier first: no rank leaves while rank 0 still
    writes its files, and the group ends with no collective in flight. ``False`` (after an
    error, which other ranks may not share): no barrier, which could wait for a rank that
    never comes; just destroy.
    """
    if not (ctx.owns_group and tdist.is_initialized()):
        return
    if clean:
        tdist.barrier()
    tdist.destroy_process_group()


def parse_device(device: str) -> torch.device:
    """``torch.device(device)``, refusing a device this machine does not have."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device must be cpu, cuda, cuda:N or mps, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is available here (torch.cuda.is_available() "
                         "is False); use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")
    return dev


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP with ``find_unused_parameters=False``: routed modules give every parameter a
    gradient even when a rank routes no token, so no parameter is ever unused."""
    if not ctx.enabled:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


def maybe_no_sync(model: nn.Module, sync: bool):
    """Skip the gradient all-reduce on accumulation micro-steps."""
    if sync or not isinstance(model, nn.parallel.DistributedDataParallel):
        return nullcontext()
    return model.no_sync()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        _all_reduce(t)
    return t


def _all_reduce(t: torch.Tensor, patience_s: float = 10.0) -> None:
    """``all_reduce(t)`` (sum, in place) that, under gloo, returns only once gloo has let go of ``t``.

    Why: gloo's worker thread drops its reference to ``t`` (the finished work) just *after*
    the result is ready, and dropping a tensor Python knows needs the GIL. When this is a
    rank's last collective (rank 1 after the test evaluation, while rank 0 writes plots),
    the main thread may already be finalising the interpreter: the worker is then killed
    inside a C++ destructor ("terminate called without an active exception", SIGABRT), or
    the main thread joins it while holding the GIL (a hang). Waiting here, GIL released,
    until the count is back closes that window (usually no wait, else 0.1 ms sleeps).
    (NCCL keeps its works until its watchdog polls; it is not waited for.)
    """
    held = t._use_count()
    tdist.all_reduce(t)
    if tdist.get_backend() != "gloo":
        return
    deadline = time.monotonic() + patience_s
    while t._use_count() > held and time.monotonic() < deadline:
        time.sleep(1e-4)  # releases the GIL, which the worker needs to drop its reference


MAX_MESSAGE_BYTES = 4096


def check_on_main(check: Callable[[], object], ctx: DistContext) -> None:
    """Run ``check`` on rank 0 only; when it raises ``ValueError`` or ``OSError``, every rank
    raises (call on all ranks).

    For what only rank 0 does (checking and locking the run folder): without this, rank 0
    stops with a one-line error and the others run on into their first collective, which
    fails with a gloo connection traceback. Rank 0 re-raises its own exception; the others
    raise ``ValueError`` with its text (cut to 4 KiB).
    """
    error = None
    if ctx.is_main:
        try:
            check()
        except (ValueError, OSError) as err:
            error = err
    if ctx.enabled:
        t = torch.zeros(MAX_MESSAGE_BYTES + 1, dtype=torch.int32, device=ctx.device)
        if error is not None:
            text = (str(error) or type(error).__name__).encode("utf-8")[:MAX_MESSAGE_BYTES]
            t[0] = len(text) + 1  # 0 = no error, so an empty message still counts
            t[1:len(text) + 1] = torch.frombuffer(bytearray(text), dtype=torch.uint8).to(t)
        _all_reduce(t)  # only rank 0 writes: the sum is its message
        n = int(t[0])
        if n and not ctx.is_main:
            raise ValueError(bytes(t[1:n].tolist()).decode("utf-8", errors="replace"))
    if error is not None:
        raise error


def any_rank(flags: list[bool], ctx: DistContext) -> list[bool]:
    """Per flag, whether it is set on any rank (so every rank stops at the same step)."""
    if not ctx.enabled:
        return list(flags)
    t = torch.tensor([float(f) for f in flags], device=ctx.device)
    _all_reduce(t)
    return [bool(v > 0) for v in t.tolist()]
