"""``benchmarks/budget.py``: every run's command is a valid recipe; the table compares like with like;
the probes patch what they say."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import budget  # noqa: E402
import budget_probes  # noqa: E402

from smakit.cli import build_parser  # noqa: E402
from smakit.routing.budget import BudgetController  # noqa: E402
from smakit.train import load_recipe, parse_overrides  # noqa: E402
from smakit.train.validate import check_model_table  # noqa: E402


def _parse(name, out):
    """``(cmd, args, overrides, recipe)`` of a run's command, read as `smakit train` reads it."""
    cmd = budget.command(name, 400, out)
    args, extra = build_parser().parse_known_args(cmd[cmd.index("train"):])
    overrides = parse_overrides(extra)
    return cmd, args, overrides, load_recipe(args.recipe, args.preset, overrides)


@pytest.mark.parametrize("name", list(budget.RUNS))
def test_every_run_is_a_valid_command(name, tmp_path):
    cmd, args, overrides, recipe = _parse(name, tmp_path / name)
    assert cmd[cmd.index("train") + 1] == budget.RUNS[name]["recipe"]
    assert args.out == str(tmp_path / name)
    check_model_table(recipe.model)
    assert overrides["max_steps"] == (budget.RUNS[name]["steps"] or 400)
    if budget.RUNS[name]["probe"]:
        assert budget.RUNS[name]["probe"] in budget_probes.PROBES


def test_rows_compare_with_the_free_run_of_the_same_task_and_length():
    assert budget.free_run("charlm-ctl-0.25") == "charlm-free"
    assert budget.free_run("charlm-ctl-0.25-1000") == "charlm-free-1000"
    assert budget.free_run("listops-ctl-0.1") == "listops-free"
    assert budget.free_run("charlm-sc-ctl-0.1") == "charlm-sc-free"  # the short conv against itself
    assert budget.free_run("charlm-sc-ctl-0.5-1000") == "charlm-sc-free-1000"
    assert budget.free_run("charlm-ug-ctl-0.25") == "charlm-ug-free"  # the recipe as it is
    assert budget.free_run("charlm-ug-ctl-0.25-seed1") == "charlm-ug-free-seed1"  # the same seed
    assert budget.free_run("charlm-ug-free-seed1") == "charlm-ug-free-seed1"
    assert budget.free_run("listops-gate-ctl-0.25") == "listops-gate-free"
    assert budget.free_run("charlm-sw-ctl-0.1-seed1") == "charlm-sw-free-seed1"  # SwiGLU against itself
    assert budget.free_run("charlm-sw-ctl-0.25-1000") == "charlm-sw-free-1000"
    assert budget.free_run("charlm-ug-ctl-0.1-ffn256") == "charlm-ug-free-ffn256"  # the GELU width probe
    assert budget.free_run("listops-fo-ctl-0.1") == "listops-fo-free"  # the Fourier bias against itself
    assert budget.free_run("listops-fo-ctl-0.25-seed1") == "listops-fo-free-seed1"
    assert all(budget.free_run(n) in budget.RUNS for n in budget.RUNS)
    summary = {"test": {"bpc": 2.9, "activation": [0.24, 0.31]}, "minutes": 1.0}
    free = {"test": {"bpc": 2.8, "activation": [1.0, 1.0]}, "minutes": 1.0}
    cells = budget.row("charlm-ctl-0.25", summary, free, 400)
    assert cells[6] == "no" and cells[8] == "+0.100"  # 0.31 is outside 0.25 +- 0.05


def test_target_warmup_probe_anneals_from_one(monkeypatch):
    monkeypatch.setattr(BudgetController, "update", budget_probes.warmup_update)
    monkeypatch.setattr(budget_probes, "WARMUP", 4)
    ctl = BudgetController(1, 0.2, rate=1.0)
    module_scores = torch.linspace(-1, 1, 100)
    ratios = []
    for _ in range(6):  # the router hands over its scores with the bias in them
        ctl.update(torch.stack([torch.zeros(100), module_scores + ctl.bias], -1)[None], None)
        ratios.append(((module_scores + ctl.bias) > 0).float().mean().item())
    assert ratios[0] == pytest.approx(1.0, abs=0.02) and ratios[2] == pytest.approx(0.6, abs=0.02)
    assert ratios[-1] == pytest.approx(0.2, abs=0.02)
    assert ctl.target.item() == pytest.approx(0.2)  # the stored target is untouched


def test_char_lm_runs_without_the_short_conv_unset_it(tmp_path):
    plain, conv = budget.command("charlm-ctl-0.25", 400, tmp_path), budget.command("charlm-sc-ctl-0.25", 400, tmp_path)
    assert "--model.short_conv none" in " ".join(plain)
    assert "short_conv" not in " ".join(conv)


def _model_table(name, tmp_path):
    return _parse(name, tmp_path)[3].model


@pytest.mark.parametrize("name, ffn", [("charlm-ug-ctl-0.25", ("gelu", 128)), ("charlm-sw-ctl-0.25", ("swiglu", 256)),
                                       ("charlm-ug-ctl-0.1-ffn256", ("gelu", 256))])
def test_char_lm_runs_keep_the_feed_forward_block_they_were_run_with(name, ffn, tmp_path):
    model = _model_table(name, tmp_path)
    assert (model["ffn_activation"], model["ffn_hidden"]) == ffn


def test_runs_not_rerun_keep_their_result_and_commit():
    old = {"machine": {"commit": "abc1234"},
           "results": {"charlm-free": {"test": {"bpc": 2.8}}, "gone-run": {"test": {}}}}
    fresh = {"charlm-ctl-0.1": {"test": {"bpc": 2.9}, "commit": "def5678"},
             "charlm-free-1000": {"test": {"bpc": 2.5}, "commit": "def5678"}}
    merged = budget.merge_results(fresh, old)
    assert list(merged) == ["charlm-free", "charlm-ctl-0.1", "charlm-free-1000"]  # RUNS order, unknown dropped
    assert merged["charlm-free"] == {"commit": "abc1234", "test": {"bpc": 2.8}}
    assert merged["charlm-ctl-0.1"]["commit"] == "def5678"
    fresh["charlm-free"] = {"test": {"bpc": 2.7}, "commit": "def5678"}
    assert budget.merge_results(fresh, old)["charlm-free"]["test"]["bpc"] == 2.7  # a rerun replaces it


def test_random_router_probe_replaces_the_scores_the_router_uses(monkeypatch):
    from smakit.routing import ThresholdRouter, threshold

    torch.manual_seed(0)
    router, x = ThresholdRouter(8).eval(), torch.randn(2, 50, 8)
    plain = router(x).logits
    monkeypatch.setattr(threshold, "project_option_major", budget_probes.noise_scores)
    noisy = router(x).logits
    assert noisy.shape == plain.shape and not torch.allclose(noisy, plain)
    assert noisy.std().item() == pytest.approx(3.0, rel=0.2)  # the probe's noise, not the projection


@pytest.mark.parametrize("name, bias", [("listops-ctl-0.25", "buckets"), ("listops-ctl-0.25-nobias", False),
                                        ("listops-fo-ctl-0.25", "fourier"), ("listops-fo-free-seed1", "fourier"),
                                        ("charlm-sw-ctl-0.25", True), ("charlm-sw-ctl-0.25-nobias", False)])
def test_runs_keep_the_relative_bias_they_were_run_with(name, bias, tmp_path):
    assert _model_table(name, tmp_path).get("relative_bias", True) == bias
