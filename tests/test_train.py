"""The training loop, recipes and the `smakit` command on tiny settings."""

import json
from pathlib import Path

import pytest
import torch

from smakit.cli import main
from smakit.train import list_recipes, load_recipe, parse_overrides
from smakit.train.batching import StepBatchSampler
from smakit.train.loop import Trainer, prepare_recipe

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare"
TINY = {"data.num_train": 64, "data.num_val": 16, "data.num_test": 16, "data.min_len": 10, "data.max_len": 40,
        "model.dim": 16, "model.depth": 1, "model.qk_dim": 8, "model.value_dim": 16, "model.window": 8,
        "train.batch_size": 8, "train.warmup_steps": 2, "train.eval_every": 3, "train.log_every": 1,
        "train.max_minutes": 0}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SMAKIT_CACHE", str(tmp_path / "cache"))


def tiny_args(**extra):
    args = []
    for k, v in {**TINY, **extra}.items():
        args += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    return args


def test_every_recipe_resolves_with_both_presets():
    names = list_recipes()
    for required in ("seqboat-listops", "seqboat-charlm", "seqboat-audio", "seqboat-image",
                     "sma-transformer-charlm", "hybrid-listops", "transformer-listops", "ema-only-charlm"):
        assert required in names, required
    for name in names:
        for preset in ("cpu", "full"):
            recipe = load_recipe(name, preset)
            prepare_recipe(recipe)  # every key known, every value of the right type and range
            assert recipe.data["name"] and recipe.train["max_steps"] > 0, name


def test_overrides_parse_like_toml_and_reject_unknown_keys():
    assert parse_overrides(["--max-steps", "30", "--lr=1e-3", "--model.attention", "relu2"]) == {
        "max_steps": 30, "lr": 1e-3, "model.attention": "relu2"}
    with pytest.raises(ValueError, match="matches no key"):
        load_recipe("seqboat-listops", overrides={"no_such_key": 1})
    with pytest.raises(ValueError, match="unknown recipe"):
        load_recipe("no-such-recipe")


def test_none_unsets_a_key_and_listops_has_a_default_budget_its_baselines_drop():
    from smakit.models import SeqBoat

    def build(recipe):
        return SeqBoat(vocab_size=20, n_classes=10, **{k: v for k, v in recipe.model.items() if k != "arch"})

    recipe = load_recipe("seqboat-listops", overrides={**TINY})
    assert recipe.model["density_target"] == 0.25
    assert build(recipe).layers[0].attn.router.budget is not None
    free = load_recipe("seqboat-listops", overrides={**TINY, "model.density_target": "none"})
    assert "density_target" not in free.model
    assert build(free).layers[0].attn.router.budget is None
    for baseline in ("seqboat-full-listops", "ema-only-listops", "mega-chunk-listops", "transformer-listops"):
        assert "density_target" not in load_recipe(baseline).model, baseline
    assert parse_overrides(["--model.density_target", "none"]) == {"model.density_target": "none"}


def test_batches_are_a_deterministic_stream_split_across_ranks():
    a = StepBatchSampler(20, 3, seed=1, rank=0, world_size=2)
    b = StepBatchSampler(20, 3, seed=1, rank=1, world_size=2)
    resumed = StepBatchSampler(20, 3, seed=1, rank=0, world_size=2, start=4)
    first = [a.batch(i) for i in range(6)]
    assert [resumed.batch(i) for i in range(4, 6)] == first[4:]
    for i in range(3):  # one epoch: ranks disjoint
        assert not set(a.batch(i)) & set(b.batch(i))


def test_train_command_writes_metrics_plots_checkpoint_and_resumes(tmp_path, cache, capsys):
    out = tmp_path / "run"
    assert main(["train", "seqboat-listops", "--out", str(out), "--no-progress", *tiny_args(max_steps=4)]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "majority-class baseline" in printed
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "eval" and "accuracy" in r for r in records)
    assert max(r["step"] for r in records) == 4
    for name in ("learning_curves.png", "activation_pattern.png", "checkpoint.pt", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4

    assert main(["train", "seqboat-listops", "--out", str(out), "--no-progress", *tiny_args(max_steps=6)]) == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 6 and 5 in steps and steps.count(1) == 1  # continued, not restarted

    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    printed = capsys.readouterr().out  # readable by default
    assert "test accuracy:" in printed and "majority-class baseline:" in printed
    assert main(["eval", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["step"] == 6 and 0 <= report["metrics"]["accuracy"] <= 1


def test_resumed_run_equals_uninterrupted_run(tmp_path, cache):
    recipe = load_recipe("seqboat-listops", overrides={**TINY, "train.max_steps": 5})
    straight = Trainer(recipe, tmp_path / "a", progress=False)
    straight.train()
    Trainer(recipe, tmp_path / "b", progress=False).train(until=3)  # interrupted after step 3
    resumed = Trainer(recipe, tmp_path / "b", progress=False)
    assert resumed.step == 3
    resumed.train()
    for (name, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)


def test_charlm_generate_command(tmp_path, cache, capsys):
    out = tmp_path / "lm"
    overrides = ["--data.path", str(SHAKESPEARE), "--data.max_bytes", "200000", "--max-steps", "2", "--eval-batches", "1", "--data.seq_len", "32", "--model.dim", "16",
                 "--model.depth", "1", "--model.qk_dim", "8", "--model.window", "8", "--batch-size", "4"]
    assert main(["train", "seqboat-charlm", "--out", str(out), "--no-progress", *overrides]) == 0
    assert "bits per byte" in capsys.readouterr().out
    assert main(["generate", str(out), "--prompt", "To be", "--length", "12"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("To be") and len(text.rstrip("\n").encode()) >= 5


def test_recipes_command_lists_one_line_each(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(list_recipes()) and all(len(line.split()) > 2 for line in lines)


def test_gradient_accumulation_equals_one_big_batch(tmp_path, cache):
    big = load_recipe("seqboat-listops", overrides={**TINY, "train.max_steps": 2, "train.batch_size": 8})
    small = load_recipe("seqboat-listops", overrides={**TINY, "train.max_steps": 2, "train.batch_size": 4,
                                                      "train.grad_accum": 2})
    a = Trainer(big, tmp_path / "big", progress=False)
    a.train()
    b = Trainer(small, tmp_path / "small", progress=False)
    b.train()
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
