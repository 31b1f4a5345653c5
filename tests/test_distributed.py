"""Data parallel training with routed modules (gloo, CPU, 2 processes).

One rank's batch is all padding, so it routes no token, while the other routes many. The
run must not hang, must not trip DDP's unused-parameter check with
``find_unused_parameters=False``, and must give the gradients of one process on the whole
batch. Each case runs two optimizer steps: DDP reports a parameter that got no gradient at
the start of the *next* iteration.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from smakit import SparseModularActivation, sma
from smakit.modules import MLP

pytestmark = pytest.mark.skipif(
    not (tdist.is_available() and tdist.is_gloo_available()) or sys.platform == "win32",
    reason="needs torch.distributed with gloo",
)

WORLD = 2
B, L, D, VOCAB = 2, 12, 8, 11  # per-rank batch
TIMEOUT_S = 120  # generous: spawning 2 processes that import torch is slow on a loaded CI box


# models and data (built identically in every process)

class RoutedNet(nn.Module):
    """Linear -> x + sma(MLP)(x, mask) -> Linear; the router leans toward routing."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(D, D)
        self.block = sma(MLP(D, 16), dim=D)
        self.out = nn.Linear(D, D)
        with torch.no_grad():
            self.block.router.proj.bias[1] += 1.0

    def forward(self, x, mask):
        h = self.inp(x)
        return self.out(h + self.block(h, mask))


def build(case: str) -> nn.Module:
    torch.manual_seed(0)
    if case == "sma":
        return RoutedNet()
    from smakit.models import SeqBoat

    return SeqBoat(vocab_size=VOCAB, dim=D, depth=2, lm=True, window=4, qk_dim=8, ema_ndim=2)


def global_batch(case: str):
    """Rank 0's rows are all padding; rank 1's rows are all real."""
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(WORLD * B, L, dtype=torch.bool)
    mask[B:] = True
    if case == "sma":
        x = torch.randn(WORLD * B, L, D, generator=g)
        target = torch.randn(WORLD * B, L, D, generator=g)
    else:
        x = torch.randint(0, VOCAB, (WORLD * B, L), generator=g)
        target = torch.randint(0, VOCAB, (WORLD * B, L), generator=g)
    return x, mask, target


def loss_fn(case: str, out, mask, target, n_real: int):
    """Sum over real tokens divided by the *global* number of real tokens."""
    if case == "sma":
        per_token = (out - target).pow(2).mean(-1)
    else:
        per_token = F.cross_entropy(out.transpose(1, 2), target, reduction="none")
    return (per_token * mask).sum() / n_real


def train(model, case, x, mask, target, n_real, scale=1.0, steps=2):
    """``steps`` SGD steps; returns the gradients of the first one."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = None
    for _ in range(steps):
        opt.zero_grad()
        (scale * loss_fn(case, model(x, mask), mask, target, n_real)).backward()
        if first is None:
            first = {n.removeprefix("module."): p.grad.detach().clone() for n, p in model.named_parameters()}
        opt.step()
    return first


# worker

CASES = ("sma-ddp", "seqboat-ddp", "seqboat-fsdp")


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _run_case(case: str, rank: int, ctx) -> dict:
    from smakit.train.distributed import wrap

    kind = case.split("-")[0]
    model = build(kind)
    if case.endswith("fsdp"):
        from torch.distributed.fsdp import fully_shard

        for layer in model.layers:
            fully_shard(layer)
        wrapped = fully_shard(model)
    else:
        wrapped = wrap(model, ctx)
        assert isinstance(wrapped, nn.parallel.DistributedDataParallel) and not wrapped.find_unused_parameters
    x, mask, target = global_batch(kind)
    rows = slice(rank * B, (rank + 1) * B)
    # DDP and FSDP average gradients over ranks; scaling by WORLD makes it the global sum
    grads = train(wrapped, kind, x[rows], mask[rows], target[rows], int(mask.sum()), scale=WORLD)
    routed = sum(int(m.stats.counts.sum()) for m in model.modules() if isinstance(m, SparseModularActivation))
    return {"grads": {n: _full(g) for n, g in grads.items()},
            "params": {n: _full(p.detach()) for n, p in model.named_parameters()}, "routed": routed}


def _worker(rank: int, port: int, out_dir: str):
    import warnings

    from smakit.train.distributed import setup

    warnings.filterwarnings("ignore", message=".*returned a view tensor.*")
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # a collective that never completes raises after the timeout instead of hanging
    tdist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=TIMEOUT_S // 2))
    try:
        ctx = setup("cpu")  # the training loop's torchrun path; joins the group made above
        assert ctx.enabled and ctx.rank == rank
        results = {case: _run_case(case, rank, ctx) for case in CASES}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory) -> list[dict]:
    """Run every case in one 2-process launch (process start-up dominates the cost)."""
    out_dir = tmp_path_factory.mktemp("dist")
    ctx = mp.start_processes(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the 2-process run did not finish in {TIMEOUT_S} s (hang)")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("case", CASES)
def test_rank_with_only_padding_matches_single_process(case, two_rank_results):
    """No hang, no unused-parameter error, gradients and two SGD steps == one process."""
    results = [r[case] for r in two_rank_results]
    assert results[0]["routed"] == 0, "rank 0 (all padding) must route nothing"
    assert results[1]["routed"] > B * L // 4, "rank 1 must route many tokens"

    kind = case.split("-")[0]
    model = build(kind)
    x, mask, target = global_batch(kind)
    grads = train(model, kind, x, mask, target, int(mask.sum()))
    for r in range(WORLD):
        for name, g in grads.items():
            torch.testing.assert_close(results[r]["grads"][name], g, rtol=1e-5, atol=1e-6, msg=name)
        for name, p in model.named_parameters():
            torch.testing.assert_close(results[r]["params"][name], p.detach(), rtol=1e-5, atol=1e-6, msg=name)
