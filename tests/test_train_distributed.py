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
from test_cli import LM, args_of
from test_train import TINY

from smakit.train.distributed import _all_reduce, setup, teardown


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(tmp_path, *cli_args: str) -> subprocess.CompletedProcess:
    """``python -m smakit.cli ...`` in two CPU processes (gloo) under torchrun."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "smakit.cli", *cli_args]
    env = {**os.environ, "SMAKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def assert_every_rank_refused(done: subprocess.CompletedProcess, text: str) -> None:
    """Both ranks stopped with the same one-line error; none crashed in a collective."""
    assert done.returncode != 0
    assert done.stderr.count(f"smakit: error: {text}") == 2, done.stderr[-3000:]
    assert "[rank1]" not in done.stderr and "Connection closed" not in done.stderr, done.stderr[-3000:]


def test_torchrun_two_processes_train_evaluate_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    done = torchrun(tmp_path, "train", "seqboat-listops", "--out", str(out), "--no-progress",
                    *args_of({**TINY, "train.max_steps": 3, "train.grad_accum": 2}))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test accuracy") == 1  # printed by rank 0 only
    assert done.stdout.count("step 3 val") == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]  # one writer
    train = [r for r in records if r["kind"] == "train"]
    assert all(r["tokens_per_s"] > 0 for r in train)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3 and not any(k.startswith("module.") for k in state["model"])

    # eval: every rank scores its shard, rank 0 prints once, the group ends cleanly
    done = torchrun(tmp_path, "eval", str(out), "--split", "test", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)  # one report, not one per rank
    summary = json.loads((out / "summary.json").read_text())
    assert report["metrics"]["accuracy"] == pytest.approx(summary["test"]["accuracy"])

    # another run holds the folder's lock: rank 0 cannot claim it, and every rank stops
    lock = out / ".smakit.lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    done = torchrun(tmp_path, "train", "seqboat-listops", "--out", str(out), "--no-progress",
                    *args_of({**TINY, "train.max_steps": 4, "train.grad_accum": 2}))
    assert_every_rank_refused(done, f"--out {out} is in use by another smakit train")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing written


def test_torchrun_refused_run_folder_stops_every_rank_with_one_line(tmp_path):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "notes.txt").write_text("not a smakit run")
    done = torchrun(tmp_path, "train", "seqboat-listops", "--out", str(out), "--no-progress",
                    *args_of({**TINY, "train.max_steps": 2}))
    assert_every_rank_refused(done, f"--out {out} is not a smakit run folder")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_torchrun_generate_prints_once(tmp_path, monkeypatch, capsys):
    from smakit.cli import main

    monkeypatch.setenv("SMAKIT_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 300)
    assert main(["train", "seqboat-charlm", "--out", str(tmp_path / "lm"), "--no-progress",
                 "--data.path", str(text), *args_of(LM)]) == 0
    command = ["generate", str(tmp_path / "lm"), "--prompt", "the ", "--length", "8"]
    capsys.readouterr()
    assert main(command) == 0
    alone = capsys.readouterr().out
    done = torchrun(tmp_path, *command)
    assert done.returncode == 0, done.stderr[-3000:]
    assert alone.startswith("the ") and done.stdout == alone  # the same text, once


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
