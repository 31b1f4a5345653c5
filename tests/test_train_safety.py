"""The trainer never loses work or reports a wrong number (issue 12), tested in-process.

The same behaviours through the real `smakit` command, in subprocesses, are in test_cli.py.
"""

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch
from test_train import TINY, tiny_args

from smakit.cli import main
from smakit.train import load_recipe
from smakit.train.checkpoint import load_checkpoint, save_checkpoint
from smakit.train.loop import Trainer, lr_lambda
from smakit.train.rundir import LOCK, MANIFEST, atomic_write
from smakit.train.stopping import TrainingDiverged


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SMAKIT_CACHE", str(tmp_path / "cache"))


def tiny(**extra):
    return load_recipe("seqboat-listops", overrides={**TINY, **extra})


def snapshot(folder):
    """Every file's bytes, to show a refused command wrote nothing."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def strict_records(path):
    def no_nan(name):
        raise AssertionError(f"metrics.jsonl holds {name}, which is not JSON")

    return [json.loads(line, parse_constant=no_nan) for line in path.read_text().splitlines()]


# -- work lost ------------------------------------------------------------------------------
def test_divergence_stops_without_saving_and_logs_null(tmp_path, cache):
    trainer = Trainer(tiny(**{"train.max_steps": 8, "train.lr": 1e4, "train.warmup_steps": 0}), tmp_path / "r",
                      progress=False)
    with pytest.raises(TrainingDiverged, match="non-finite loss"):
        trainer.train()
    records = strict_records(tmp_path / "r" / "metrics.jsonl")
    assert records[-1]["kind"] == "diverged" and records[-1]["loss"] is None
    assert not (tmp_path / "r" / "checkpoint.pt").exists()  # nothing good to keep yet
    assert not (tmp_path / "r" / LOCK).exists()


def test_non_finite_weights_stop_every_rank_not_only_the_writer(tmp_path, cache):
    trainer = Trainer(tiny(), tmp_path / "r", progress=False)
    trainer.ctx.rank = 1  # a rank that writes no checkpoint must stop as rank 0 does
    with torch.no_grad():
        next(trainer.model.parameters())[0] = float("nan")
    with pytest.raises(TrainingDiverged, match="weights are not finite"):
        trainer.save()
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_best_checkpoint_follows_the_validation_metric(tmp_path, cache):
    trainer = Trainer(tiny(**{"train.max_steps": 5, "train.eval_every": 1}), tmp_path / "r", progress=False)
    trainer.train()
    evals = [r for r in strict_records(tmp_path / "r" / "metrics.jsonl") if r["kind"] == "eval"]
    best = max(evals, key=lambda r: (r["accuracy"], -r["step"]))  # first step reaching the max
    state = load_checkpoint(tmp_path / "r" / "best.pt")
    assert state["step"] == best["step"] and state["best"]["value"] == best["accuracy"]
    assert load_checkpoint(tmp_path / "r")["step"] == 5


def test_checkpoint_checksum_and_unreadable_files(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "step": 1, "recipe": {}}, path)
    assert load_checkpoint(path)["step"] == 1
    state = torch.load(path, weights_only=True)
    state["model"]["w"][0] = 2.0  # bit rot / tampering, checksum left as it was
    torch.save(state, path)
    with pytest.raises(ValueError, match="corrupted"):
        load_checkpoint(path)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("hello")
    (tmp_path / "run").mkdir()
    for name, message in [("empty.pt", "empty"), ("text.pt", "not a smakit checkpoint"),
                          ("run", "no checkpoint.pt in"), ("missing.pt", "no such checkpoint")]:
        with pytest.raises(ValueError, match=message):
            load_checkpoint(tmp_path / name)


def test_atomic_writes_use_unique_temp_names_and_fsync(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    target = tmp_path / "checkpoint.pt"
    with atomic_write(target, "wb") as a, atomic_write(target, "wb") as b:  # two writers at once
        a.write(b"first")
        b.write(b"second")
    assert target.read_bytes() == b"first"  # the outer one finished last
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"] and len(synced) >= 2


def test_other_model_on_resume_is_refused_before_writing(tmp_path, cache):
    Trainer(tiny(**{"train.max_steps": 3}), tmp_path / "r", progress=False).train()
    before = snapshot(tmp_path / "r")
    with pytest.raises(ValueError, match=r"model.dim: 16 -> 32"):
        Trainer(tiny(**{"train.max_steps": 3, "model.dim": 32}), tmp_path / "r", progress=False)
    assert snapshot(tmp_path / "r") == before


def test_folder_that_is_not_a_run_and_empty_out_are_refused(tmp_path, cache):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "config.json").write_text('{"mine": 1}')
    (user / "metrics.jsonl").write_text('{"x": 1}\n')
    before = snapshot(user)
    with pytest.raises(ValueError, match="not a smakit run folder"):
        Trainer(tiny(), user, progress=False)
    assert snapshot(user) == before
    with pytest.raises(ValueError, match="--out must name a run folder"):
        Trainer(tiny(), "", progress=False)


def test_run_written_before_manifests_still_resumes(tmp_path, cache):
    Trainer(tiny(**{"train.max_steps": 6}), tmp_path / "r", progress=False).train(until=3)
    (tmp_path / "r" / MANIFEST).unlink()  # as an older smakit left it: config.json + checkpoint.pt
    resumed = Trainer(tiny(**{"train.max_steps": 6}), tmp_path / "r", progress=False)
    assert resumed.step == 3


def test_lock_refuses_a_live_holder_and_replaces_a_stale_one(tmp_path, cache):
    run = tmp_path / "r"
    run.mkdir()
    (run / LOCK).write_text(json.dumps({"pid": 1, "host": os.uname().nodename}))  # pid 1 is alive
    trainer = Trainer(tiny(**{"train.max_steps": 1}), run, progress=False)
    with pytest.raises(ValueError, match="in use by another smakit train"):
        trainer.train()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    trainer.train()  # stale lock of a finished process: taken over
    assert trainer.step == 1 and not (run / LOCK).exists() and (run / MANIFEST).exists()


# -- wrong numbers --------------------------------------------------------------------------
def test_resume_applies_a_new_learning_rate_to_the_schedule(tmp_path, cache):
    Trainer(tiny(**{"train.max_steps": 6}), tmp_path / "r", progress=False).train(until=3)
    resumed = Trainer(tiny(**{"train.max_steps": 6, "train.lr": 0.01}), tmp_path / "r", progress=False)
    want = 0.01 * lr_lambda(3, resumed.cfg)
    assert [g["lr"] for g in resumed.optimizer.param_groups] == pytest.approx([want, want])
    assert "train.lr 0.003 -> 0.01" in resumed.notes[0] and "applied" in resumed.notes[0]
    resumed.train()
    lrs = {r["step"]: r["lr"] for r in strict_records(tmp_path / "r" / "metrics.jsonl") if r["kind"] == "train"}
    assert lrs[4] == pytest.approx(0.01 * lr_lambda(4, resumed.cfg))


def test_split_without_windows_is_an_error_not_zero(tmp_path):
    text = tmp_path / "small.txt"
    text.write_text("to be or not to be " * 150)  # 2.8 KB: val and test get 142 bytes each
    recipe = load_recipe("seqboat-charlm", overrides={"data.path": str(text), "data.seq_len": 500})
    with pytest.raises(ValueError, match="val split of data 'text' has no examples.*data.seq_len"):
        Trainer(recipe, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("override, message", [
    ({"train.max_steps": 2.5}, r"train.max_steps \(--max-steps\) must be an integer >= 1, got 2.5"),
    ({"train.max_steps": -1}, r"train.max_steps .* got -1"),
    ({"train.max_steps": "abc"}, r"train.max_steps .* got 'abc'"),
    ({"train.eval_every": 0}, r"train.eval_every \(--eval-every\) must be an integer >= 1"),
    ({"train.batch_size": 0}, r"train.batch_size .* >= 1"),
    ({"train.betas": [0.9]}, r"train.betas .* two numbers"),
    ({"model.dimm": 3}, r"unknown key model.dimm \(did you mean model.dim\?\); valid model keys: .*\bdim\b.*window"),
    ({"model.dim": "big"}, r"model.dim must be a number"),
    ({"data.min_len": "ten"}, r"data.min_len must be a number"),
    ({"data.num_trian": 3}, r"unknown key data.num_trian .*; valid data keys: .*num_train"),
], ids=lambda v: str(v)[:30])
def test_config_is_checked_before_data_or_model_is_built(override, message, tmp_path, monkeypatch):
    def never(*a, **k):
        raise AssertionError("built data before checking the config")

    monkeypatch.setattr("smakit.train.loop.build_datasets", never)
    with pytest.raises(ValueError, match=message):
        Trainer(tiny(**override), tmp_path / "r", progress=False)


def test_relative_data_path_is_stored_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text("some text for a tiny model " * 400)
    recipe = load_recipe("seqboat-charlm", overrides={"data.path": "t.txt", "data.seq_len": 16})
    Trainer(recipe, "r", progress=False)
    assert recipe.data["path"] == str(tmp_path / "t.txt")


# -- recipes --------------------------------------------------------------------------------
def test_extends_cannot_leave_the_recipes_folder(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    folder.mkdir()
    (tmp_path / "outside.toml").write_text('description = "x"\n[data]\nname = "listops"\n')
    monkeypatch.setenv("SMAKIT_RECIPES", str(folder))
    for parent in ("../outside", str(tmp_path / "outside"), ".hidden"):
        (folder / "child.toml").write_text(f'extends = "{parent}"\n')
        with pytest.raises(ValueError, match="extends must be the name of a recipe in the same folder"):
            load_recipe("child")


def test_recipe_without_presets_runs_and_preset_none_selects_the_base(tmp_path, cache):
    path = tmp_path / "bare.toml"
    body = "\n".join(f'{k.split(".")[1]} = {json.dumps(v)}' for k, v in TINY.items() if k.startswith("train."))
    path.write_text('description = "no presets"\n[data]\nname = "listops"\n[model]\n[train]\nmax_steps = 1\n'
                    + body.replace("max_minutes = 0\n", ""))
    recipe = load_recipe(str(path))  # the default preset "cpu" does not exist: base tables
    assert recipe.preset is None and recipe.train["max_steps"] == 1
    assert load_recipe("seqboat-listops", "none").train["max_steps"] == 90000
    with pytest.raises(ValueError, match="has no preset 'gpu'.*none"):
        load_recipe("seqboat-listops", "gpu")


# -- CLI messages (in-process; the subprocess runs are in test_cli.py) ------------------------
def test_cli_user_mistakes_are_one_line(tmp_path, cache, capsys):
    (tmp_path / "text.pt").write_text("not a checkpoint")
    (tmp_path / "afile").write_text("")
    cases = [
        (["train", "seqboat-listops", "--out", str(tmp_path / "a"), *tiny_args(max_steps=2.5)], "train.max_steps"),
        (["train", "seqboat-listops", "--out", str(tmp_path / "a"), *tiny_args(max_steps=-1)], "got -1"),
        (["train", "seqboat-listops", "--out", str(tmp_path / "a"), *tiny_args(eval_every=0)], "train.eval_every"),
        (["train", "seqboat-listops", "--out", str(tmp_path / "a"), *tiny_args(batch_size=0)], "train.batch_size"),
        (["train", "seqboat-listops", "--out", str(tmp_path / "afile" / "x"), *tiny_args()], "not a folder"),
        (["eval", str(tmp_path / "missing.pt")], "no such checkpoint"),
        (["eval", str(tmp_path / "text.pt")], "not a smakit checkpoint"),
        (["generate", str(tmp_path / "text.pt")], "not a smakit checkpoint"),
        (["train", "seqboat-charlm", "--out", str(tmp_path / "b"), "--data.path", str(tmp_path / "nope")],
         "no text file or folder at"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("smakit: error:") and message in err and "\n" not in err, (argv, err)
    with pytest.raises(ValueError):  # --debug: the real exception, traceback and all
        main(["--debug", "eval", str(tmp_path / "text.pt")])


def test_cli_os_errors_are_one_line(monkeypatch, capsys):
    def denied(args):
        raise PermissionError(13, "Permission denied", "/data/private")

    monkeypatch.setattr("smakit.cli.cmd_recipes", denied)  # tests run as root: chmod cannot deny
    assert main(["recipes"]) == 2
    assert capsys.readouterr().err.strip() == "smakit: error: permission denied: /data/private"


# -- issue 13 item 5 ------------------------------------------------------------------------
def test_trainer_shares_data_helpers_and_leaves_matplotlib_backend_alone():
    import matplotlib

    import smakit.data
    import smakit.data.base
    import smakit.train.loop
    import smakit.train.plots

    assert smakit.train.loop.IGNORE_INDEX is smakit.data.base.IGNORE_INDEX
    assert smakit.train.loop.bits_per_byte is smakit.data.bits_per_byte
    before = matplotlib.get_backend()
    matplotlib.use("pdf")
    try:
        importlib.reload(smakit.train.plots)
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(before)
