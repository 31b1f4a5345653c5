"""Does ``density_target`` hold, and what does it cost? The CPU recipes with a budget, against
the free run, and the runs that look for where the cost comes from.

Run: ``python benchmarks/budget.py [NAME ...] [--steps 400] [--jobs 2] [--out-root /tmp/smakit-budget]``
from the repository root (it reads ``../shared/data/shakespeare`` like the issue's command).
Each run is ``smakit train <recipe> --max-steps N --out <out-root>/<name>`` with
``OMP_NUM_THREADS=1``, ``--jobs`` of them at once (probe runs go through
``budget_probes.py``, which patches one thing in first); a run whose ``summary.json`` exists
is read, not rerun (``--fresh`` reruns all); runs not named keep their result from the
committed ``budget.json``, with the commit that made it. Writes ``benchmarks/results/budget.{json,md,png}``:
the test activation of every layer against its target (the band is target +- 0.05), test bpc
(char-LM) or accuracy (ListOps) against the free run of the same task and length, and the
load average.
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

def _run(recipe, mechanism, target=None, extra=(), probe=None, steps=None, conv=False, gate=False, ffn=False,
         fourier=False):
    """One training run: ``probe`` (see ``budget_probes.py``) patches the model; ``steps``
    replaces ``--steps``; ``conv`` keeps the char-LM recipe's short convolution (the runs
    without it are the layer as it was before it); ``gate``: the layer has an update gate;
    ``ffn``: the char-LM recipe's SwiGLU feed-forward block (else GELU, hidden 128, as before);
    ``fourier``: the ListOps recipe's Fourier relative bias (else the bucket table, as before)."""
    return {"recipe": recipe, "mechanism": mechanism, "target": target, "extra": list(extra), "probe": probe,
            "steps": steps, "conv": conv, "gate": gate, "ffn": ffn, "fourier": fourier}


CHARLM, LISTOPS = "seqboat-charlm", "seqboat-listops"


def _charlm(mechanism, target=None, extra=(), steps=None):
    """A char-LM run of the recipe as it is: short convolution, update gate, SwiGLU blocks."""
    return _run(CHARLM, mechanism, target, extra, steps=steps, conv=True, gate=True, ffn=True)


def _listops(mechanism, target=None, extra=()):
    """A ListOps run of the recipe as it is: the Fourier relative bias."""
    return _run(LISTOPS, mechanism, target, extra, fourier=True)


RECIPE_GATE = {CHARLM: True, LISTOPS: False}  # update_gate as each recipe sets it
NO_BIAS = ["--model.relative_bias", "false"]
OLD_FFN = ["--model.ffn_activation", "gelu", "--model.ffn_hidden", "128"]  # char-LM's cpu preset before SwiGLU
OLD_BIAS = ["--model.relative_bias", "buckets"]  # the ListOps recipe before the Fourier bias
RUNS = {
    "charlm-free": _run(CHARLM, "free"),
    "charlm-free-seed1": _run(CHARLM, "free", extra=["--train.seed", "1"]),
    "charlm-ctl-0.1": _run(CHARLM, "controller", 0.1),
    "charlm-ctl-0.25": _run(CHARLM, "controller", 0.25),
    "charlm-ctl-0.5": _run(CHARLM, "controller", 0.5),
    "charlm-ctl-0.25-seed1": _run(CHARLM, "controller", 0.25, ["--train.seed", "1"]),
    # what might make the budget cost less (see the Budget page)
    "charlm-ctl-0.25-gate1": _run(CHARLM, "controller", 0.25, ["--model.straight_through", "true"]),
    "charlm-ctl-0.25-warmup200": _run(CHARLM, "controller", 0.25, probe="target_warmup"),
    "charlm-ctl-0.25-rate0.1": _run(CHARLM, "controller", 0.25, ["--model.density_rate", "0.1"]),
    "charlm-ctl-0.25-temp0.25": _run(CHARLM, "controller", 0.25, ["--model.temperature_scale", "0.25"]),
    "charlm-ctl-0.25-random-router": _run(CHARLM, "controller", 0.25, probe="random_router"),
    "charlm-ctl-0.25-all-keys": _run(CHARLM, "controller", 0.25, probe="all_keys"),
    "charlm-ctl-0.1-all-keys": _run(CHARLM, "controller", 0.1, probe="all_keys"),
    "charlm-st-0.1": _run(CHARLM, "straight_through", 0.1),
    "charlm-st-0.25": _run(CHARLM, "straight_through", 0.25),
    "charlm-loss-0.25": _run(CHARLM, "loss", 0.25),
    "charlm-ema-only": _run(CHARLM, "ema_only", extra=["--model.variant", "ema_only"]),
    "charlm-free-1000": _run(CHARLM, "free", steps=1000),
    "charlm-ctl-0.1-1000": _run(CHARLM, "controller", 0.1, steps=1000),
    "charlm-ctl-0.25-1000": _run(CHARLM, "controller", 0.25, steps=1000),
    "charlm-ctl-0.5-1000": _run(CHARLM, "controller", 0.5, steps=1000),
    "charlm-ema-only-1000": _run(CHARLM, "ema_only", extra=["--model.variant", "ema_only"], steps=1000),
    # the recipe as it is: a short convolution before the EMA (short_conv = 4)
    "charlm-sc-free": _run(CHARLM, "free", conv=True),
    "charlm-sc-free-seed1": _run(CHARLM, "free", extra=["--train.seed", "1"], conv=True),
    "charlm-sc-ctl-0.1": _run(CHARLM, "controller", 0.1, conv=True),
    "charlm-sc-ctl-0.25": _run(CHARLM, "controller", 0.25, conv=True),
    "charlm-sc-ctl-0.5": _run(CHARLM, "controller", 0.5, conv=True),
    "charlm-sc-ctl-0.25-seed1": _run(CHARLM, "controller", 0.25, ["--train.seed", "1"], conv=True),
    "charlm-sc-ema-only": _run(CHARLM, "ema_only", extra=["--model.variant", "ema_only"], conv=True),
    "charlm-sc-free-k8": _run(CHARLM, "free", extra=["--model.short_conv", "8"], conv=True),
    "charlm-sc-ctl-0.1-k8": _run(CHARLM, "controller", 0.1, ["--model.short_conv", "8"], conv=True),
    "charlm-sc-free-window4": _run(CHARLM, "free", extra=["--model.window", "4"], conv=True),
    "charlm-free-window4": _run(CHARLM, "free", extra=["--model.window", "4"]),
    "charlm-sc-free-1000": _run(CHARLM, "free", steps=1000, conv=True),
    "charlm-sc-ctl-0.1-1000": _run(CHARLM, "controller", 0.1, steps=1000, conv=True),
    "charlm-sc-ctl-0.25-1000": _run(CHARLM, "controller", 0.25, steps=1000, conv=True),
    "charlm-sc-ctl-0.5-1000": _run(CHARLM, "controller", 0.5, steps=1000, conv=True),
    "charlm-sc-free-window1": _run(CHARLM, "free", extra=["--model.window", "1"], conv=True),
    "charlm-sc-ctl-0.25-window1": _run(CHARLM, "controller", 0.25, ["--model.window", "1"], conv=True),
    "charlm-sc-ema-only-1000": _run(CHARLM, "ema_only", extra=["--model.variant", "ema_only"], steps=1000,
                                    conv=True),
    # the recipe as it is: the short convolution and the update gate
    "charlm-ug-free": _run(CHARLM, "free", conv=True, gate=True),
    "charlm-ug-free-seed1": _run(CHARLM, "free", extra=["--train.seed", "1"], conv=True, gate=True),
    "charlm-ug-ctl-0.1": _run(CHARLM, "controller", 0.1, conv=True, gate=True),
    "charlm-ug-ctl-0.25": _run(CHARLM, "controller", 0.25, conv=True, gate=True),
    "charlm-ug-ctl-0.5": _run(CHARLM, "controller", 0.5, conv=True, gate=True),
    "charlm-ug-ctl-0.1-seed1": _run(CHARLM, "controller", 0.1, ["--train.seed", "1"], conv=True, gate=True),
    "charlm-ug-ctl-0.25-seed1": _run(CHARLM, "controller", 0.25, ["--train.seed", "1"], conv=True, gate=True),
    "charlm-ug-ema-only": _run(CHARLM, "ema_only", extra=["--model.variant", "ema_only"], conv=True, gate=True),
    "charlm-ug-free-window1": _run(CHARLM, "free", extra=["--model.window", "1"], conv=True, gate=True),
    "charlm-ug-free-1000": _run(CHARLM, "free", steps=1000, conv=True, gate=True),
    "charlm-ug-ctl-0.1-1000": _run(CHARLM, "controller", 0.1, steps=1000, conv=True, gate=True),
    "charlm-ug-ctl-0.25-1000": _run(CHARLM, "controller", 0.25, steps=1000, conv=True, gate=True),
    "charlm-ug-ctl-0.5-1000": _run(CHARLM, "controller", 0.5, steps=1000, conv=True, gate=True),
    # the recipe as it is: SwiGLU feed-forward blocks of hidden 256 (cpu preset)
    "charlm-sw-free": _charlm("free"),
    "charlm-sw-free-seed1": _charlm("free", extra=["--train.seed", "1"]),
    "charlm-sw-ctl-0.1": _charlm("controller", 0.1),
    "charlm-sw-ctl-0.25": _charlm("controller", 0.25),
    "charlm-sw-ctl-0.5": _charlm("controller", 0.5),
    "charlm-sw-ctl-0.1-seed1": _charlm("controller", 0.1, ["--train.seed", "1"]),
    "charlm-sw-ctl-0.25-seed1": _charlm("controller", 0.25, ["--train.seed", "1"]),
    "charlm-sw-ctl-0.5-seed1": _charlm("controller", 0.5, ["--train.seed", "1"]),
    "charlm-sw-ema-only": _charlm("ema_only", extra=["--model.variant", "ema_only"]),
    "charlm-sw-free-window1": _charlm("free", extra=["--model.window", "1"]),
    # the same size with GELU: is it the gate or the width?
    "charlm-ug-free-ffn256": _run(CHARLM, "free", extra=["--model.ffn_hidden", "256"], conv=True, gate=True),
    "charlm-ug-ctl-0.1-ffn256": _run(CHARLM, "controller", 0.1, ["--model.ffn_hidden", "256"], conv=True,
                                     gate=True),
    "charlm-ug-ema-only-ffn256": _run(CHARLM, "ema_only", extra=["--model.variant", "ema_only",
                                                                 "--model.ffn_hidden", "256"], conv=True, gate=True),
    "charlm-sw-free-1000": _charlm("free", steps=1000),
    "charlm-sw-ctl-0.1-1000": _charlm("controller", 0.1, steps=1000),
    "charlm-sw-ctl-0.25-1000": _charlm("controller", 0.25, steps=1000),
    # rotary alone, without the relative bias (its per-pair lookup is the sparse step's largest overhead)
    "charlm-sw-free-nobias": _charlm("free", extra=NO_BIAS),
    "charlm-sw-ctl-0.1-nobias": _charlm("controller", 0.1, NO_BIAS),
    "charlm-sw-ctl-0.25-nobias": _charlm("controller", 0.25, NO_BIAS),
    "listops-free-nobias": _run(LISTOPS, "free", extra=NO_BIAS),
    "listops-ctl-0.25-nobias": _run(LISTOPS, "controller", 0.25, NO_BIAS),
    "listops-free-seed1": _run(LISTOPS, "free", extra=["--train.seed", "1"]),
    "listops-ctl-0.25-seed1": _run(LISTOPS, "controller", 0.25, ["--train.seed", "1"]),
    "listops-free-nobias-seed1": _run(LISTOPS, "free", extra=[*NO_BIAS, "--train.seed", "1"]),
    "listops-ctl-0.25-nobias-seed1": _run(LISTOPS, "controller", 0.25, [*NO_BIAS, "--train.seed", "1"]),
    "listops-free": _run(LISTOPS, "free"),
    "listops-ctl-0.1": _run(LISTOPS, "controller", 0.1),
    "listops-ctl-0.25": _run(LISTOPS, "controller", 0.25),
    "listops-ctl-0.5": _run(LISTOPS, "controller", 0.5),
    "listops-gate-free": _run(LISTOPS, "free", gate=True),
    "listops-gate-ctl-0.25": _run(LISTOPS, "controller", 0.25, gate=True),
    # the recipe as it is: the Fourier relative bias
    "listops-fo-free": _listops("free"),
    "listops-fo-ctl-0.1": _listops("controller", 0.1),
    "listops-fo-ctl-0.25": _listops("controller", 0.25),
    "listops-fo-ctl-0.5": _listops("controller", 0.5),
    "listops-fo-free-seed1": _listops("free", extra=["--train.seed", "1"]),
    "listops-fo-ctl-0.25-seed1": _listops("controller", 0.25, ["--train.seed", "1"]),
}


def free_run(name: str) -> str:
    """The free run a row is compared with: same task, layer, number of steps and seed (when
    that seed has a free run)."""
    spec = RUNS[name]
    if spec["recipe"] == CHARLM:
        base = "charlm-" + ("sw-" if spec["ffn"] else "ug-" if spec["gate"] else "sc-" if spec["conv"] else "") + "free"
        if not spec["ffn"] and "--model.ffn_hidden" in spec["extra"]:  # the GELU width probe
            base += "-ffn256"
    else:
        base = "listops-gate-free" if spec["gate"] else "listops-fo-free" if spec["fourier"] else "listops-free"
    extra = spec["extra"]
    if "--model.relative_bias" in extra:  # rotary alone against itself
        base += "-nobias"
    seed = extra[extra.index("--train.seed") + 1] if "--train.seed" in extra else None
    if seed is not None and f"{base}-seed{seed}" in RUNS:
        return f"{base}-seed{seed}"
    return base + (f"-{spec['steps']}" if spec["steps"] else "")


def command(name: str, steps: int, out: Path) -> list[str]:
    spec = RUNS[name]
    head = ["-m", "smakit.cli"] if spec["probe"] is None else [str(ROOT / "benchmarks" / "budget_probes.py"),
                                                                spec["probe"]]
    cmd = [sys.executable, *head, "train", spec["recipe"], "--max-steps", str(spec["steps"] or steps),
           "--out", str(out), "--no-progress", *spec["extra"]]
    if spec["recipe"] == CHARLM:
        cmd += ["--data.path", SHAKESPEARE] + ([] if spec["conv"] else ["--model.short_conv", "none"])

    if spec["gate"] != RECIPE_GATE[spec["recipe"]]:
        cmd += ["--model.update_gate", str(spec["gate"]).lower()]
    if spec["recipe"] == CHARLM and not spec["ffn"]:  # before any later --model.ffn_hidden in extra
        cmd[cmd.index("--no-progress") + 1:cmd.index("--no-progress") + 1] = OLD_FFN
    if spec["recipe"] == LISTOPS and not spec["fourier"]:  # before the rotary-alone runs' relative_bias false
        cmd[cmd.index("--no-progress") + 1:cmd.index("--no-progress") + 1] = OLD_BIAS
    if spec["target"] is not None:
        cmd += ["--model.density_target", str(spec["target"]), "--model.density_mode", spec["mechanism"]]
    elif spec["mechanism"] == "free":  # seqboat-listops has a default budget
        cmd += ["--model.density_target", "none"]
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


def options(name: str) -> str:
    spec = RUNS[name]
    extra = " ".join(a for a in spec["extra"] if a != "--model.variant" and a != "ema_only")
    conv = spec["recipe"] == CHARLM and not spec["conv"] and "short_conv none"
    gate = spec["gate"] != RECIPE_GATE[spec["recipe"]] and f"update_gate {str(spec['gate']).lower()}"
    ffn = spec["recipe"] == CHARLM and not spec["ffn"] and "gelu ffn"
    return " ".join(x for x in (conv, gate, ffn, extra, spec["probe"] and f"probe {spec['probe']}") if x) or "-"


def row(name: str, summary: dict, free: dict | None, steps: int) -> list:
    spec = RUNS[name]
    target, test = spec["target"], summary["test"]
    act = test.get("activation") or []
    held = "-" if target is None else ("yes" if all(abs(a - target) <= BAND for a in act) else "no")
    key, unit = ("bpc", "bpc") if "bpc" in test else ("accuracy", "acc")
    delta = "-" if free is None else f"{test[key] - free['test'][key]:+.3f}"
    return [name, spec["mechanism"], "-" if target is None else target, options(name), spec["steps"] or steps,
            " ".join(f"{a:.3f}" for a in act) or "-", held, f"{test[key]:.3f} {unit}", delta,
            round(summary["minutes"], 1), summary.get("commit", "-")]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    markers = {"controller": "o", "straight_through": "s", "loss": "x", "free": "*", "ema_only": "v"}
    for name, s in results.items():
        spec = RUNS[name]
        if spec["recipe"] != CHARLM or spec["steps"] or spec["extra"] or spec["probe"]:
            continue
        target, act = spec["target"], s["test"].get("activation") or [0.0]
        ax1.scatter(sum(act) / len(act), s["test"]["bpc"], marker=markers[spec["mechanism"]], s=50, label=name)
        if target is not None:
            ax2.scatter([target] * len(act), act, marker=markers[spec["mechanism"]], s=40, label=name)
    ax1.set(xlabel="test activation (mean over layers)", ylabel="test bpc", title="char-LM: quality vs compute")
    ax1.legend(fontsize=6)
    xs = [0, 0.6]
    ax2.plot(xs, xs, "k--", lw=1)
    ax2.fill_between(xs, [x - BAND for x in xs], [x + BAND for x in xs], color="g", alpha=0.15, label="target +- 0.05")
    ax2.set(xlabel="density_target", ylabel="test activation per layer", title="char-LM: does the budget hold?")
    ax2.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def merge_results(fresh: dict, old: dict) -> dict:
    """This invocation's results over the earlier ones (``old``: a loaded ``budget.json``):
    runs not asked for this time keep their earlier result and the commit that made it; the
    order is that of ``RUNS``."""
    old_commit = old.get("machine", {}).get("commit", "-")
    kept = {n: {"commit": old_commit, **s} for n, s in old.get("results", {}).items() if n in RUNS}
    return {n: fresh.get(n) or kept[n] for n in RUNS if n in fresh or n in kept}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", default=list(RUNS))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out-root", default="/tmp/smakit-budget")
    parser.add_argument("--fresh", action="store_true", help="rerun runs that already have a summary")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in RUNS]
    if unknown:
        parser.error(f"unknown run {unknown[0]!r}; known: {', '.join(RUNS)}")
    root = Path(args.out_root)
    root.mkdir(parents=True, exist_ok=True)
    load_before, env = os.getloadavg(), machine()  # the commit the runs use
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {n: pool.submit(run_one, n, args.steps, root, args.fresh) for n in args.names}
        fresh = {n: {**f.result(), "commit": env["commit"]} for n, f in futures.items()}
    load_after = os.getloadavg()
    old = json.loads((RESULTS / "budget.json").read_text()) if (RESULTS / "budget.json").exists() else {}
    results = merge_results(fresh, old)
    rows = [row(name, s, results.get(free_run(name)), args.steps) for name, s in results.items()]
    header = ["run", "mechanism", "target", "options", "steps", "test activation per layer",
              f"in target +- {BAND}", "test", "vs free", "minutes", "commit"]
    earlier = old.get("loads") or ([{"commit": old.get("machine", {}).get("commit", "-"), "runs": sorted(old.get("results", {})),
                                      "before": old["load_average"][0], "after": old["load_average"][1]}]
                                    if "load_average" in old else [])
    loads = [*earlier, {"commit": env["commit"], "runs": sorted(fresh), "before": load_before,
                                     "after": load_after}]
    load_text = "; ".join(f"{x['commit']}: {x['before'][0]:.1f} before / {x['after'][0]:.1f} after"
                          for x in loads)
    table = (f"# The compute budget: does density_target hold, and what does it cost?\n\nCPU presets, one torch thread "
             f"per run ({env['cpu']}); each row gives the commit that ran it; load average (1 min) per invocation: "
             f"{load_text}. 'vs free': against the free run of the same task, steps and short "
             f"convolution. Probes (see `benchmarks/budget_probes.py`) are what-if runs at full compute.\n\n"
             + markdown_table(header, rows))
    commands = {n: command(n, args.steps, root / n)[1:] for n in results}
    write("budget", {"machine": env, "steps": args.steps, "loads": loads, "commands": commands,
                     "results": results}, table)
    plot(results, RESULTS / "budget.png")
    print(table)


if __name__ == "__main__":
    main()
