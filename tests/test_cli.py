"""The `smakit` command run as users run it, in subprocesses: exits, messages, files left behind."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import tiny_args

from smakit.cli import main
from smakit.train.checkpoint import load_checkpoint
from smakit.train.rundir import LOCK

ROOT = Path(__file__).resolve().parents[1]
LM = {"data.seq_len": 16, "model.dim": 16, "model.depth": 1, "model.qk_dim": 8, "model.value_dim": 16,
      "model.window": 8, "model.ffn_hidden": 16, "train.batch_size": 4, "train.eval_batches": 1,
      "train.warmup_steps": 1, "train.max_steps": 2, "train.eval_every": 2, "train.max_minutes": 0}


def env_for(tmp_path):
    return {**os.environ, "PYTHONPATH": str(ROOT), "SMAKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def start(args, tmp_path, cwd=None):
    return subprocess.Popen([sys.executable, "-m", "smakit.cli", *args], cwd=cwd or tmp_path, env=env_for(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def smakit(args, tmp_path, cwd=None):
    return finish(start(args, tmp_path, cwd))


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def args_of(table):
    out = []
    for k, v in table.items():
        out += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SMAKIT_CACHE", str(tmp_path / "cache"))


def test_user_mistakes_print_one_line_and_write_nothing(tmp_path, cache):
    run = tmp_path / "run"  # a real run, 2 steps, to resume with a different model
    assert main(["train", "seqboat-listops", "--out", str(run), "--no-progress", *tiny_args(max_steps=2)]) == 0
    busy = tmp_path / "busy"
    shutil.copytree(run, busy)
    (busy / LOCK).write_text(json.dumps({"pid": 1, "host": os.uname().nodename}))  # pid 1: alive
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "norun").mkdir()
    before = {p: snapshot(p) for p in (run, busy, tmp_path / "norun")}
    train = ["train", "seqboat-listops", "--no-progress"]
    device = "cuda" if not torch.cuda.is_available() else "cuda:99"
    cases = [
        ([*train, "--out", str(tmp_path / "a"), *tiny_args(max_steps="abc")], "train.max_steps (--max-steps) must be an integer"),
        ([*train, "--out", str(tmp_path / "a"), "--model.dimm", "3"], "valid model keys:"),
        ([*train, "--out", "", *tiny_args()], "--out must name a run folder"),
        ([*train, "--out", str(tmp_path / "a"), "--device", device], f"--device {device}:"),
        ([*train, "--out", str(run), *tiny_args(max_steps=4), "--model.dim", "32"], "model.dim: 16 -> 32"),
        ([*train, "--out", str(busy), *tiny_args(max_steps=4)], "in use by another smakit train (pid 1"),
        (["eval", str(tmp_path / "empty.pt")], "is empty (0 bytes)"),
        (["eval", str(tmp_path / "norun")], "no checkpoint.pt in"),
    ]
    procs = []
    for i in range(0, len(cases), 4):  # four at a time
        procs += [start(argv, tmp_path) for argv, _ in cases[i:i + 4]]
        done = [finish(p) for p in procs[i:]]
        for (argv, message), (rc, _out, err) in zip(cases[i:i + 4], done):
            err = err.strip()
            assert rc == 2, (argv, err)
            assert err.startswith("smakit: error:") and message in err, (argv, err)
            assert "\n" not in err and "Traceback" not in err, err
    assert not (tmp_path / "a").exists()
    for folder, files in before.items():
        assert snapshot(folder) == files, folder


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    proc = start(["train", "seqboat-listops", "--out", str(out), "--no-progress",
                  *tiny_args(max_steps=100000, eval_every=100000)], tmp_path)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 180
    while not (metrics.exists() and '"kind": "train"' in metrics.read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    rc, _, stderr = finish(proc)
    assert rc == 130, stderr
    assert "interrupted at step" in stderr and "Traceback" not in stderr
    step = load_checkpoint(out)["step"]
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert step >= 1 and step == max(logged)  # every finished step is in the checkpoint
    assert not (out / LOCK).exists()


def test_divergence_keeps_the_last_good_checkpoint_and_exits_nonzero(tmp_path, cache):
    out = tmp_path / "run"
    assert main(["train", "seqboat-listops", "--out", str(out), "--no-progress", *tiny_args(max_steps=3)]) == 0
    good = (out / "checkpoint.pt").read_bytes()
    rc, stdout, stderr = smakit(["train", "seqboat-listops", "--out", str(out), "--no-progress",
                                 *tiny_args(max_steps=12, lr=1e4, warmup_steps=0)], tmp_path)
    assert rc == 1, stderr
    assert "train.lr 0.003 -> 10000.0" in stdout and "applied" in stdout  # resume says what it did
    assert "training diverged at step" in stderr and "keeps step 3" in stderr and "Traceback" not in stderr
    assert (out / "checkpoint.pt").read_bytes() == good and (out / "best.pt").exists()
    text = (out / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text and '"loss": null' in text


def test_eval_and_generate_read_exactly_the_given_file_and_write_nothing(tmp_path, cache, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "t.txt").write_text("the quick brown fox jumps over the lazy dog. " * 300)
    monkeypatch.chdir(work)  # a relative --data.path, resolved when stored
    assert main(["train", "seqboat-charlm", "--out", "a", "--no-progress", "--data.path", "t.txt", *args_of(LM)]) == 0
    assert main(["train", "seqboat-charlm", "--out", "b", "--no-progress", "--data.path", "t.txt",
                 *args_of({**LM, "model.dim": 24})]) == 0
    shutil.copy(work / "a" / "checkpoint.pt", work / "b" / "old.pt")  # run a's model inside run b
    before = snapshot(work / "b")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ev = start(["eval", str(work / "b" / "old.pt"), "--json"], tmp_path, cwd=elsewhere)
    gen = start(["generate", str(work / "b" / "old.pt"), "--prompt", "the ", "--length", "8"], tmp_path, cwd=elsewhere)
    rc, out, err = finish(ev)
    assert rc == 0, err
    report = json.loads(out)
    assert report["checkpoint"].endswith("old.pt") and report["metrics"]["bpc"] > 0
    assert report["parameters"] == json.loads((work / "a" / "summary.json").read_text())["parameters"]
    rc, out, err = finish(gen)
    assert rc == 0 and out.startswith("the "), err
    assert snapshot(work / "b") == before and sorted(os.listdir(elsewhere)) == []
