"""`smakit train` under torchrun: two CPU processes (gloo) run the same script as one."""

import json
import os
import socket
import subprocess
import sys

import torch
from test_train import TINY


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
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]  # one writer
    train = [r for r in records if r["kind"] == "train"]
    assert all(r["tokens_per_s"] > 0 for r in train)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3 and not any(k.startswith("module.") for k in state["model"])
