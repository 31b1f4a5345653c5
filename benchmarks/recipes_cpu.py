"""Run each SeqBoat recipe's CPU preset and keep its summary and plots for the docs.

Run: ``python benchmarks/recipes_cpu.py [--fsdd PATH] [NAME ...]``. Writes
``benchmarks/results/recipe-<name>.json``, ``recipe-<name>-learning_curves.png``,
``recipe-<name>-activation_pattern.png`` and the table ``benchmarks/results/recipes.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from smakit.train import format_summary, load_recipe, run  # noqa: E402

from common import RESULTS, machine, markdown_table  # noqa: E402

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"
RECIPES = ("seqboat-listops", "seqboat-charlm", "seqboat-image", "seqboat-audio")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", default=list(RECIPES))
    parser.add_argument("--fsdd", default=str(FSDD), help="FSDD folder for seqboat-audio")
    args = parser.parse_args()
    rows = []
    for name in args.names:
        overrides = {"data.root": args.fsdd} if name == "seqboat-audio" else {}
        recipe = load_recipe(name, "cpu", overrides)
        RESULTS.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as out:
            summary = run(recipe, out, progress=False)
            print(format_summary(summary))
            for png in ("learning_curves.png", "activation_pattern.png"):
                shutil.copy(Path(out) / png, RESULTS / f"recipe-{name}-{png}")
        summary.pop("plots", None)
        (RESULTS / f"recipe-{name}.json").write_text(json.dumps(summary, indent=2))
        test = summary["test"]
        rows.append([name, summary["steps"], round(summary["minutes"], 1),
                     f"{test['bpc']:.3f} bpc" if "bpc" in test else f"{test['accuracy']:.3f} accuracy",
                     f"{summary['majority_accuracy']:.3f}" if "majority_accuracy" in summary else "-",
                     " ".join(f"{a:.2f}" for a in test.get("activation") or [])])
    env = machine()
    table = f"# Recipes, CPU presets\n\nDevice: {env['device']}, commit {env['commit']}\n\n" + markdown_table(
        ["recipe", "steps", "minutes", "test", "majority class", "activation per layer"], rows)
    (RESULTS / "recipes.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
