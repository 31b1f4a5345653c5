"""Run each SeqBoat recipe's CPU preset and keep its summary and plots for the docs.

Run: ``python benchmarks/recipes_cpu.py [--fsdd PATH] [NAME ...]``. Writes
``benchmarks/results/recipe-<name>.json``, ``recipe-<name>-learning_curves.png``,
``recipe-<name>-activation_pattern.png`` (and ``-confusion_matrix.png`` for classification)
and the table ``benchmarks/results/recipes.md`` of every recipe result there.
``seqboat-textclf`` trains on the Shakespeare genre set of ``make_genre_set.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from make_genre_set import build_records, write_jsonl  # noqa: E402

from smakit.train import format_summary, load_recipe, run  # noqa: E402

from common import RESULTS, machine, markdown_table  # noqa: E402

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"
RECIPES = ("seqboat-listops", "seqboat-charlm", "seqboat-image", "seqboat-audio", "seqboat-textclf")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", default=list(RECIPES))
    parser.add_argument("--fsdd", default=str(FSDD), help="FSDD folder for seqboat-audio")
    args = parser.parse_args()
    rows = []
    for name in args.names:
        RESULTS.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as out:
            overrides = {"data.root": args.fsdd} if name == "seqboat-audio" else {}
            if name.endswith("-textclf"):
                overrides = {"data.path": str(write_jsonl(build_records(), Path(out) / "genre.jsonl"))}
            recipe = load_recipe(name, "cpu", overrides)
            summary = run(recipe, Path(out) / "run", progress=False)
            print(format_summary(summary))
            for png in ("learning_curves.png", "activation_pattern.png", "confusion_matrix.png"):
                if (Path(out) / "run" / png).exists():
                    shutil.copy(Path(out) / "run" / png, RESULTS / f"recipe-{name}-{png}")
        summary.pop("plots", None)
        summary.get("classification", {}).pop("plot", None)
        summary["load_average"] = os.getloadavg()[1]  # over the last 5 minutes of the run
        (RESULTS / f"recipe-{name}.json").write_text(json.dumps(summary, indent=2))
    for name in RECIPES:  # the table lists every recipe measured so far
        if not (RESULTS / f"recipe-{name}.json").exists():
            continue
        summary = json.loads((RESULTS / f"recipe-{name}.json").read_text())
        test = summary["test"]
        rows.append([name, summary["steps"], round(summary["minutes"], 1),
                     f"{test['bpc']:.3f} bpc" if "bpc" in test else f"{test['accuracy']:.3f} accuracy",
                     f"{summary['majority_accuracy']:.3f}" if "majority_accuracy" in summary else "-",
                     " ".join(f"{a:.2f}" for a in test.get("activation") or [])])
    env = machine()
    table = (f"# Recipes, CPU presets\n\nDevice: {env['device']}; table written at commit {env['commit']}, each "
             "row from the last run of that recipe (`recipe-<name>.json`)\n\n") + markdown_table(
        ["recipe", "steps", "minutes", "test", "majority class", "activation per layer"], rows)
    (RESULTS / "recipes.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
