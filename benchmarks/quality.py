"""Quality benchmark: SeqBoat vs its ablations and a Transformer, same parameter and training budget.

Run: ``python benchmarks/quality.py [--task listops|charlm|all] [--steps N]``. Each model is
trained with the task's CPU preset (same steps, batch, learning rate, data); model widths
are matched to SeqBoat's parameter count (within ~10%) by adjusting ``dim``. Writes
``benchmarks/results/quality.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from smakit.train import load_recipe, run  # noqa: E402
from smakit.train.build import build_datasets  # noqa: E402

from common import RESULTS, machine, markdown_table, matched_dim, parameter_count  # noqa: E402

MODELS = {"SeqBoat": "seqboat", "SeqBoat-full": "seqboat_full", "Mega-chunk": "mega_chunk",
          "EMA-only": "ema_only", "Transformer": "transformer"}
TASKS = {"listops": "seqboat-listops", "charlm": "seqboat-charlm"}
SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare"


def bench_task(task: str, steps: int | None, data_overrides: dict) -> list[dict]:
    base = load_recipe(TASKS[task], "cpu", data_overrides)
    info = build_datasets(base.data)["train"].info
    target = parameter_count(info, base.model)
    rows = []
    for label, variant in MODELS.items():
        overrides = {**data_overrides, "model.variant": variant}
        if steps:
            overrides["train.max_steps"] = steps
        recipe = load_recipe(TASKS[task], "cpu", overrides)
        recipe.train["max_minutes"] = 0  # same number of steps for every model
        if variant != "seqboat":
            recipe.model["dim"] = matched_dim(info, recipe.model, target)
        with tempfile.TemporaryDirectory() as out:
            summary = run(recipe, out, progress=True)
        test = summary["test"]
        rows.append({"task": task, "model": label, "variant": variant, "dim": recipe.model["dim"],
                     "parameters": summary["parameters"], "steps": summary["steps"],
                     "minutes": summary["minutes"], "accuracy": test["accuracy"], "loss": test["loss"],
                     "bpc": test.get("bpc"), "activation": test.get("activation"),
                     "majority": summary.get("majority_accuracy")})
        print(json.dumps(rows[-1]))
    return rows


def report(rows: list[dict], env: dict, tasks: list[str], note: str = "") -> str:
    """Write ``quality.{json,md,png}`` from the measured rows; returns the Markdown."""
    table = f"# Quality: same parameter and training budget\n\nDevice: {env['device']}, commit {env['commit']}\n\n"
    majority = {r["task"]: r["majority"] for r in rows if r["majority"] is not None}
    for task in tasks:
        lm = task == "charlm"
        table += f"## {task}\n\n" + markdown_table(
            ["model", "params", "steps", "minutes", "test acc.", *(["test bpc"] if lm else []), "activation"],
            [[r["model"], r["parameters"], r["steps"], r["minutes"], r["accuracy"], *([r["bpc"]] if lm else []),
              " ".join(f"{a:.2f}" for a in r["activation"]) if r["activation"] else "-"]
             for r in rows if r["task"] == task]) + "\n"
        if task in majority:
            table += f"Majority-class baseline: {majority[task]:.4f} test accuracy.\n\n"
    table += ("Minutes are wall time; the models ran one after another, so they compare only on a "
              "machine with nothing else running. Activation: the fraction of tokens each routed "
              "layer ran its attention on (test split).\n")
    if note:
        table += f"\n{note}\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"machine": env, "rows": rows, **({"note": note} if note else {})}
    (RESULTS / "quality.json").write_text(json.dumps(payload, indent=2))
    (RESULTS / "quality.md").write_text(table)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sub = [r for r in rows if r["task"] == task]
        key = "bpc" if task == "charlm" else "accuracy"
        ax.bar([r["model"] for r in sub], [r[key] for r in sub], color="tab:blue")
        if task in majority:
            ax.axhline(majority[task], color="gray", ls="--", label="majority class")
            ax.legend()
        ax.set(title=f"{task}: test {key}", ylabel=key)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(RESULTS / "quality.png", dpi=110)
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="all", choices=["all", *TASKS])
    parser.add_argument("--steps", type=int, default=None, help="override the preset's max_steps")
    parser.add_argument("--text", default=str(SHAKESPEARE), help="text file/folder for char-LM")
    parser.add_argument("--from-json", action="store_true", help="rewrite the table and plot from quality.json")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads((RESULTS / "quality.json").read_text())
        tasks = list(dict.fromkeys(r["task"] for r in saved["rows"]))
        print(report(saved["rows"], saved["machine"], tasks, saved.get("note", "")))
        return
    tasks = list(TASKS) if args.task == "all" else [args.task]
    rows = []
    for task in tasks:
        data = {"data.path": args.text} if task == "charlm" else {}
        rows += bench_task(task, args.steps, data)
    print(report(rows, machine(), tasks))


if __name__ == "__main__":
    main()
