"""Does ``density_target`` hold? The CPU recipes with a budget, against the free run.

Run: ``python benchmarks/budget.py [--steps 400] [--jobs 2] [--out-root /tmp/smakit-budget]``
from the repository root (it reads ``../shared/data/shakespeare`` like the issue's command).
Each run is ``smakit train <recipe> --max-steps N --out <out-root>/<name>`` with
``OMP_NUM_THREADS=1``, ``--jobs`` of them at once; a run whose ``summary.json`` exists is read,
not rerun (``--fresh`` reruns all). Writes ``benchmarks/results/budget.{json,md,png}``: the
test activation of every layer against its target (the band is target +- 0.05), test bpc
(char-LM) or accuracy (ListOps) against the free run, and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine, markdown_table, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = "../shared/data/shakespeare"
BAND = 0.05

# name: (recipe, mechanism, target, extra overrides)
RUNS = {
    "charlm-free": ("seqboat-charlm", "free", None, []),
    "charlm-ctl-0.1": ("seqboat-charlm", "controller", 0.1, []),
    "charlm-ctl-0.25": ("seqboat-charlm", "controller", 0.25, []),
    "charlm-ctl-0.5": ("seqboat-charlm", "controller", 0.5, []),
    "charlm-st-0.1": ("seqboat-charlm", "straight_through", 0.1, []),
    "charlm-st-0.25": ("seqboat-charlm", "straight_through", 0.25, []),
    "charlm-loss-0.25": ("seqboat-charlm", "loss", 0.25, []),
    "charlm-ema-only": ("seqboat-charlm", "ema_only", None, ["--model.variant", "ema_only"]),
    "listops-free": ("seqboat-listops", "free", None, []),
    "listops-ctl-0.25": ("seqboat-listops", "controller", 0.25, []),
}


def command(name: str, steps: int, out: Path) -> list[str]:
    recipe, mechanism, target, extra = RUNS[name]
    cmd = [sys.executable, "-m", "smakit.cli", "train", recipe, "--max-steps", str(steps), "--out", str(out),
           "--no-progress", *extra]
    if recipe == "seqboat-charlm":
        cmd += ["--data.path", SHAKESPEARE]
    if target is not None:
        cmd += ["--model.density_target", str(target), "--model.density_mode", mechanism]
    return cmd


def run_one(name: str, steps: int, root: Path, fresh: bool) -> dict:
    out = root / name
    if fresh and out.exists():
        shutil.rmtree(out)
    if not (out / "summary.json").exists():
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        log = root / f"{name}.log"
        with open(log, "w") as f:
            subprocess.run(command(name, steps, out), cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                           check=True)
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("plots", None)
    return summary


def row(name: str, summary: dict, free: dict) -> list:
    recipe, mechanism, target, _ = RUNS[name]
    test = summary["test"]
    act = test.get("activation") or []
    held = "-" if target is None else ("yes" if all(abs(a - target) <= BAND for a in act) else "no")
    if "bpc" in test:
        quality, delta = f"{test['bpc']:.3f} bpc", f"{test['bpc'] - free['test']['bpc']:+.3f}"
    else:
        quality, delta = f"{test['accuracy']:.3f} acc", f"{test['accuracy'] - free['test']['accuracy']:+.3f}"
    return [name, mechanism, "-" if target is None else target, " ".join(f"{a:.3f}" for a in act) or "-",
            held, quality, delta, round(summary["minutes"], 1)]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    markers = {"controller": "o", "straight_through": "s", "loss": "x", "free": "*", "ema_only": "v"}
    for name, s in results.items():
        recipe, mechanism, target, _ = RUNS[name]
        if recipe != "seqboat-charlm":
            continue
        act = s["test"].get("activation") or [0.0]
        ax1.scatter(sum(act) / len(act), s["test"]["bpc"], marker=markers[mechanism], s=60,
                    label=f"{mechanism}" + ("" if target is None else f" {target}"))
        if target is not None:
            ax2.scatter([target] * len(act), act, marker=markers[mechanism], s=50, label=f"{mechanism} {target}")
    ax1.set(xlabel="test activation (mean over layers)", ylabel="test bpc", title="char-LM: quality vs compute")
    ax1.legend(fontsize=7)
    xs = [0, 0.6]
    ax2.plot(xs, xs, "k--", lw=1)
    ax2.fill_between(xs, [x - BAND for x in xs], [x + BAND for x in xs], color="g", alpha=0.15, label="target +- 0.05")
    ax2.set(xlabel="density_target", ylabel="test activation per layer", title="char-LM: does the budget hold?")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", default=list(RUNS))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out-root", default="/tmp/smakit-budget")
    parser.add_argument("--fresh", action="store_true", help="rerun runs that already have a summary")
    args = parser.parse_args()
    root = Path(args.out_root)
    root.mkdir(parents=True, exist_ok=True)
    load_before, env = os.getloadavg(), machine()  # the commit the runs use
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {n: pool.submit(run_one, n, args.steps, root, args.fresh) for n in args.names}
        results = {n: f.result() for n, f in futures.items()}
    load_after = os.getloadavg()
    rows = []
    for name, s in results.items():
        free_name = "charlm-free" if RUNS[name][0] == "seqboat-charlm" else "listops-free"
        rows.append(row(name, s, results.get(free_name, s)))
    header = ["run", "mechanism", "target", "test activation per layer", f"in target +- {BAND}", "test",
              "vs free", "minutes"]
    table = (f"# The compute budget: does density_target hold?\n\n{args.steps} steps, CPU presets, device "
             f"{env['device']}, commit {env['commit']}, load average {load_before[0]:.1f} before / "
             f"{load_after[0]:.1f} after (1 min).\n\n" + markdown_table(header, rows))
    write("budget", {"machine": env, "steps": args.steps, "load_average": [load_before, load_after],
                     "commands": {n: command(n, args.steps, root / n)[2:] for n in results}, "results": results},
          table)
    plot(results, RESULTS / "budget.png")
    print(table)


if __name__ == "__main__":
    main()
