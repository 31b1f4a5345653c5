"""`smakit train` under torchrun: two CPU processes (gloo) run the same script as one,
and every rank ends cleanly (no abort or hang at exit)."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as tdist
from test_train import TINY

from smakit.train.distributed import _all_reduce, setup, teardown


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_train_evaluate_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = []
    for k, v in {**TINY, "train.max_steps": 3, "train.grad_accum": 2}.items():
        args += [f"--{k}", json.dumps(v)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "smakit.cli", "train", "seqboat-listops", "--out", str(out), "--no-progress", *args]
    env = {**os.environ, "SMAKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test accuracy") == 1  # printed by rank 0 only
    assert done.stdout.count("step 3 val") == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]  # one writer
    train = [r for r in records if r["kind"] == "train"]
    assert all(r["tokens_per_s"] > 0 for r in train)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3 and not any(k.startswith("module.") for k in state["model"])


@pytest.fixture
def gloo_alone(tmp_path):
    """A one-process gloo group in this process (gloo's worker threads, no peer)."""
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        tdist.destroy_process_group()


def test_all_reduce_returns_once_gloo_has_let_go_of_the_tensor(gloo_alone):
    # gloo's worker drops the finished work just after wait() returns; a rank whose last
    # collective this was could exit while that worker still needed the GIL (SIGABRT).
    # Without the wait in _all_reduce, gloo still held `t` in some of these rounds.
    for _ in range(300):
        t = torch.ones(3)
        _all_reduce(t)
        assert t._use_count() == 1


def test_teardown_leaves_a_group_the_caller_made(gloo_alone, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun, but the group already exists
    ctx = setup("cpu")
    assert not ctx.owns_group
    teardown(ctx)
    assert tdist.is_initialized()
