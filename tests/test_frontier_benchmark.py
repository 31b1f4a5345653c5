"""``benchmarks/frontier.py``: the time-budgeted training hook, the frontier summary, the
table and plot it writes, and the Benchmarks-page sentences read from its JSON."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import frontier  # noqa: E402


def row(task, model, quality, step_ms, target=None, rise=10.0):
    overrides = {} if target is None else {"model.density_target": target}
    return {"task": task, "model": model, "label": frontier.MODELS[model][0], "budget_minutes": 1.0,
            "overrides": overrides, "parameters": 1000, "steps": 10, "step_ms": step_ms, "threads": 2,
            "peak_rss_mib": 400.0 + rise, "train_rss_mib": rise, "quality": quality, "accuracy": quality,
            "activation": [0.2, 0.3] if target else None, "load_before": 0.5, "load_after": 0.7}


ROWS = [row("listops", "seqboat-0.1", 0.30, 80, 0.1), row("listops", "seqboat-0.25", 0.345, 90, 0.25),
        row("listops", "seqboat-free", 0.35, 100), row("listops", "seqboat-full", 0.40, 120, rise=50),
        row("listops", "transformer", 0.33, 40, rise=5), row("listops", "ema-only", 0.20, 60)]


def test_frontier_keeps_only_unbeaten_models():
    fastest_first = ["transformer", "seqboat-0.25", "seqboat-free", "seqboat-full"]
    assert frontier.frontier_models(ROWS, higher=True) == fastest_first
    bpc = [{**r, "quality": 3 - r["quality"]} for r in ROWS]  # lower is better: same order
    assert frontier.frontier_models(bpc, higher=False) == frontier.frontier_models(ROWS, higher=True)


def test_summary_names_best_fastest_and_cheapest_budget():
    s = frontier.summarise({"rows": ROWS})["listops"]
    assert (s["best"]["model"], s["runner_up"]["model"]) == ("seqboat-full", "seqboat-free")
    assert (s["fastest"]["model"], s["lightest"]["model"]) == ("transformer", "transformer")
    assert s["budget"]["target"] == 0.25  # 0.1 costs 5 points, 0.25 costs 0.5
    worse = [r if r["model"] != "seqboat-0.25" else {**r, "quality": 0.2} for r in ROWS]
    assert frontier.summarise({"rows": worse})["listops"]["budget"]["target"] is None
    unbudgeted = [r for r in ROWS if not r["overrides"]]
    assert frontier.summarise({"rows": unbudgeted})["listops"]["budget"] is None


def test_report_and_page_sentences(tmp_path, monkeypatch):
    results = {"rows": ROWS, "quick": False, "machine": {"device": "cpu", "torch": "x", "commit": "abc"}}
    results["summary"] = frontier.summarise(results)
    frontier.write_report(results, tmp_path / "frontier")
    table = (tmp_path / "frontier.md").read_text()
    assert "| **SeqBoat-full** | 1000 | 120 | 10 | 450 (+50) | 0.4 | - |" in table
    assert "| EMA-only |" in table and (tmp_path / "frontier.png").stat().st_size > 0
    pytest.importorskip("mkdocs")
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    monkeypatch.setattr(hooks, "RESULTS", tmp_path)
    page = type("Page", (), {"file": type("File", (), {"src_uri": "benchmarks.md"})()})()
    assert hooks._frontier_summary(page) == ""
    (tmp_path / "frontier.json").write_text(json.dumps(results))
    text = hooks.on_page_markdown("<!-- frontier-summary -->", page, None, None)
    assert "**SeqBoat-full** did the most with them (40.0% accuracy" in text
    assert "The fastest step was Transformer's (40 ms" in text
    assert "budget within 2 accuracy points of the free router is 0.25" in text


def test_train_one_stops_at_the_time_budget(tmp_path):
    """One tiny ListOps run in process: the step hook times every step and the cap holds."""
    spec = {"recipe": "seqboat-listops", "minutes": 0.02,
            "overrides": {**frontier.QUICK["listops"], "data.cache_dir": str(tmp_path), "model.dim": 16,
                          "model.qk_dim": 8, "model.value_dim": 32, "train.batch_size": 4}}
    out = frontier.train_one(spec)
    assert out["steps"] >= 1 and out["train_minutes"] < 0.02 + 0.5  # stops after the step that crosses the cap
    assert out["step_ms"] > 0 and out["peak_rss_mib"] >= out["train_rss_mib"] >= 0
    assert 0 <= out["accuracy"] <= 1 and len(out["activation"]) == 2


def test_table_cells_never_use_exponents():
    from common import markdown_table, number

    cells = {1022.4: "1,022", 7690.0: "7,690", 56.6: "56.6", 0.126: "0.126", 1.0: "1", 81424: "81,424", 1024: "1024",
             0.0: "0", "-": "-"}
    assert {v: number(v) for v in cells} == cells
    assert markdown_table(["a", "b"], [[1580.0, 0.5]]) == "| a | b |\n|---|---|\n| 1,580 | 0.5 |\n"
