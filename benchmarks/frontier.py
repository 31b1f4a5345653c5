"""Quality against compute: every model trains for the same wall-clock minutes on the CPU.

Run: ``python benchmarks/frontier.py [--tasks listops charlm] [--models ...] [--minutes 10]``
(``--quick`` for a smoke run of seconds per model; ``--scale-check`` for the ListOps setting
in which the official SeqBoat code reached 36.95% test accuracy in 10 minutes on 2 cores).
Writes ``benchmarks/results/frontier.{json,md,png}``.

* Models: SeqBoat with ``--model.density_target`` 0.1 / 0.25 / 0.5 and without (free
  router), SeqBoat-full, Mega-chunk, EMA-only and the Transformer, each from its recipe
  (``seqboat-listops``, ``transformer-charlm``, ...) with the ``cpu`` preset. A baseline
  whose parameter count is more than 5% away from free SeqBoat's gets the ``dim`` that
  matches it best.
* Tasks: ListOps (the cpu preset's data) and byte-level LM on ``../shared/data/shakespeare``
  with 1,024-byte sequences, where attention cost matters.
* Budget: ``train.max_minutes`` caps the run; the learning rate warms up over the recipe's
  steps, then follows a cosine over the *time* budget, so every model ends its schedule when
  its minutes end, whatever its step time. No evaluation runs inside the budget.
* Measured per model, each in its own process, one after another: test accuracy or bits per
  byte, median train-step time (data, forward, backward, optimizer), peak resident memory
  (``getrusage``) and its rise during training, the realised activation of each routed layer
  on the test split, and the 1-minute load average before and after.
* Results already in ``frontier.json`` with the same budget are kept (``--redo`` re-runs).
* Run it on an otherwise idle machine: on a shared one, two torch threads per run can be
  many times slower than one (``--threads 1``), and step times compare only at equal load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, commit, machine, markdown_table, matched_dim, parameter_count  # noqa: E402

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare"
NAME = "frontier"

# key: (label, recipe stem, overrides); the recipe is f"{stem}-{task}"
MODELS = {
    "seqboat-0.1": ("SeqBoat 0.1", "seqboat", {"model.density_target": 0.1}),
    "seqboat-0.25": ("SeqBoat 0.25", "seqboat", {"model.density_target": 0.25}),
    "seqboat-0.5": ("SeqBoat 0.5", "seqboat", {"model.density_target": 0.5}),
    "seqboat-free": ("SeqBoat free", "seqboat", {"model.density_target": "none"}),  # listops has a default
    "seqboat-full": ("SeqBoat-full", "seqboat-full", {}),
    "mega-chunk": ("Mega-chunk", "mega-chunk", {}),
    "ema-only": ("EMA-only", "ema-only", {}),
    "transformer": ("Transformer", "transformer", {}),
}
REFERENCE = "seqboat-free"  # the parameter count the others match
MATCH_TOLERANCE = 0.05

# task: (metric, higher is better, overrides of the cpu preset)
TASKS = {
    "listops": ("accuracy", True, {}),
    "charlm": ("bpc", False, {"data.seq_len": 1024, "train.batch_size": 8, "train.eval_batches": 0}),
}
TASK_TITLES = {"listops": "ListOps", "charlm": "Char-LM (Shakespeare)"}
SMALL_COST = {"accuracy": 0.02, "bpc": 0.05}  # a budget "costs little" within this of the free router
QUICK = {
    "listops": {"data.num_train": 128, "data.num_val": 16, "data.num_test": 32, "data.max_len": 80},
    "charlm": {"data.max_bytes": 120_000, "data.seq_len": 1024, "train.batch_size": 2},
}
QUICK_MINUTES = 0.1

# The official SeqBoat code: 2 layers, d 64, ListOps lengths 50-300, 20k train / 2k test,
# batch 32, AdamW 2e-3, 10 minutes on this 2-core CPU -> 36.95% test accuracy.
SCALE_CHECK = {
    "recipe": "seqboat-listops", "minutes": 10.0, "reference_accuracy": 0.3695,
    "overrides": {"data.num_train": 20_000, "data.num_val": 200, "data.num_test": 2_000, "data.min_len": 50,
                  "data.max_len": 300, "model.dim": 64, "model.depth": 2, "model.qk_dim": 32,
                  "model.value_dim": 128, "model.window": 128, "train.batch_size": 32, "train.lr": 0.002,
                  "model.density_target": "none"},  # the free router, as committed (the recipe now has 0.25)
}
NO_LIMIT = 10**9  # max_steps / eval_every: the time cap ends the run


# -- one model, in its own process ------------------------------------------------------------


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def budget_trainer(minutes: float):
    """A :class:`~smakit.train.Trainer` with a time-based cosine schedule and step timing."""
    from torch.optim.lr_scheduler import LambdaLR

    from smakit.train import Trainer

    class BudgetTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.step_ms, self.t0 = [], None
            self.scheduler = LambdaLR(self.optimizer, self.lr_factor)

        def lr_factor(self, step: int) -> float:
            cfg = self.cfg
            if step < cfg.warmup_steps:
                return (step + 1) / cfg.warmup_steps
            done = 0.0 if self.t0 is None else min((time.perf_counter() - self.t0) / (minutes * 60), 1.0)
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * done))

        def _optimizer_step(self, *args) -> dict:
            start = time.perf_counter()
            self.t0 = self.t0 or start
            out = super()._optimizer_step(*args)
            self.step_ms.append((time.perf_counter() - start) * 1e3)
            return out

    return BudgetTrainer


def train_one(spec: dict) -> dict:
    """Train ``spec["recipe"]`` (cpu preset + ``spec["overrides"]``) for ``spec["minutes"]``."""
    import torch

    from smakit.train import load_recipe

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    recipe = load_recipe(spec["recipe"], "cpu", spec["overrides"])
    recipe.train.update(max_minutes=spec["minutes"], max_steps=NO_LIMIT, eval_every=NO_LIMIT)
    with tempfile.TemporaryDirectory() as out:
        trainer = budget_trainer(spec["minutes"])(recipe, out, progress=False)
        rss_before = peak_rss_mib()
        timing = trainer.train()
        test = trainer.evaluate("test")
    if not trainer.step_ms:
        raise RuntimeError("no train step was timed: Trainer._optimizer_step is no longer the step hook")
    steady = trainer.step_ms[min(3, len(trainer.step_ms) - 1):]  # the first steps warm caches up
    peak = peak_rss_mib()
    return {"recipe": recipe.name, "dim": recipe.model["dim"], "threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in trainer.model.parameters()), "steps": timing["steps"],
            "train_minutes": timing["minutes"], "step_ms": statistics.median(steady),
            "step_ms_mean": statistics.fmean(steady), "peak_rss_mib": peak, "train_rss_mib": peak - rss_before,
            "accuracy": test["accuracy"], "loss": test["loss"], "bpc": test.get("bpc"),
            "activation": test.get("activation")}


def run_isolated(spec: dict) -> dict:
    """:func:`train_one` in a fresh Python process, so its peak memory is its own."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        threads = {"OMP_NUM_THREADS": str(spec["threads"])} if spec.get("threads") else {}
        path = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, **threads, "PYTHONPATH": path}
        before = os.getloadavg()[0]
        subprocess.run([sys.executable, __file__, "--worker", str(spec_path), str(out_path)], check=True, env=env)
        after = os.getloadavg()[0]
        return {**json.loads(out_path.read_text()), "load_before": before, "load_after": after, "commit": commit()}


# -- the sweep ----------------------------------------------------------------------------------


def task_overrides(task: str, text: str, quick: bool) -> dict:
    overrides = dict(TASKS[task][2])
    if task == "charlm":
        overrides["data.path"] = text
    return {**overrides, **(QUICK[task] if quick else {})}


def plan(task: str, keys: list[str], base: dict) -> dict:
    """``{key: recipe overrides}`` with baseline widths matched to free SeqBoat's parameter count."""
    from smakit.train import load_recipe
    from smakit.train.build import build_datasets

    reference = load_recipe(f"{MODELS[REFERENCE][1]}-{task}", "cpu", base)
    info = build_datasets(reference.data)["train"].info
    target = parameter_count(info, reference.model)
    out = {}
    for key in keys:
        overrides = {**base, **MODELS[key][2]}
        model = load_recipe(f"{MODELS[key][1]}-{task}", "cpu", overrides).model
        if abs(parameter_count(info, model) - target) > MATCH_TOLERANCE * target:
            overrides["model.dim"] = matched_dim(info, model, target)
        out[key] = overrides
    return out


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"rows": []}


def sweep(args, results: dict, path: Path) -> None:
    for task in args.tasks:
        base = task_overrides(task, args.text, args.quick)
        todo = [k for k in args.models if args.redo or not any(
            r["task"] == task and r["model"] == k and r["budget_minutes"] == args.minutes for r in results["rows"])]
        if not todo:
            continue
        for key, overrides in plan(task, todo, base).items():
            label, stem, _ = MODELS[key]
            spec = {"recipe": f"{stem}-{task}", "overrides": overrides, "minutes": args.minutes,
                    "threads": args.threads}
            print(f"[{task}] {label}: {args.minutes} min, overrides {overrides}", flush=True)
            row = {"task": task, "model": key, "label": label, "budget_minutes": args.minutes,
                   "overrides": overrides, **run_isolated(spec)}
            row["quality"] = row[TASKS[task][0]]
            results["rows"] = [r for r in results["rows"] if (r["task"], r["model"]) != (task, key)] + [row]
            save(results, path, args)
            print(json.dumps({k: row[k] for k in ("label", "parameters", "steps", "step_ms", "peak_rss_mib",
                                                  "quality", "activation", "load_before", "load_after")}), flush=True)


def scale_check(args, results: dict, path: Path) -> None:
    minutes = QUICK_MINUTES if args.quick else SCALE_CHECK["minutes"]
    overrides = {**SCALE_CHECK["overrides"], **(QUICK["listops"] if args.quick else {})}
    print(f"[scale check] {SCALE_CHECK['recipe']}: {minutes} min, overrides {overrides}", flush=True)
    row = run_isolated({"recipe": SCALE_CHECK["recipe"], "overrides": overrides, "minutes": minutes,
                        "threads": args.threads})
    row.update(overrides=overrides, budget_minutes=minutes, reference_accuracy=SCALE_CHECK["reference_accuracy"],
               passed=row["accuracy"] >= SCALE_CHECK["reference_accuracy"])
    results["scale_check"] = row
    save(results, path, args)
    verdict = "PASS" if row["passed"] else "FAIL"
    print(f"scale check {verdict}: test accuracy {row['accuracy']:.4f} in {row['steps']} steps "
          f"(official SeqBoat code: {SCALE_CHECK['reference_accuracy']:.4f})", flush=True)


def save(results: dict, path: Path, args) -> None:
    order = {(t, k): (i, j) for i, t in enumerate(TASKS) for j, k in enumerate(MODELS)}
    results["rows"].sort(key=lambda r: order.get((r["task"], r["model"]), (99, 99)))
    results.update(machine=machine(), quick=args.quick, tasks={
        t: {"metric": m, "higher_is_better": h} for t, (m, h, _) in TASKS.items()
        if any(r["task"] == t for r in results["rows"])})
    results["summary"] = summarise(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    write_report(results, path.with_suffix(""))


# -- summary, table and plot ----------------------------------------------------------------


def frontier_models(rows: list[dict], higher: bool) -> list[str]:
    """Keys of the rows that no other row beats on both step time and quality, fastest first."""
    out, best = [], -math.inf
    for r in sorted(rows, key=lambda r: r["step_ms"]):
        q = r["quality"] if higher else -r["quality"]
        if q > best:
            out.append(r["model"])
            best = q
    return out


def cheapest_budget(rows: list[dict], metric: str, higher: bool) -> dict | None:
    """The smallest ``density_target`` whose quality is within :data:`SMALL_COST` of the free router."""
    free = next((r for r in rows if r["model"] == REFERENCE), None)
    budgets = [r for r in rows if isinstance(r["overrides"].get("model.density_target"), float)]
    if free is None or not budgets:
        return None
    for r in sorted(budgets, key=lambda r: r["overrides"]["model.density_target"]):
        target = r["overrides"]["model.density_target"]
        cost = (free["quality"] - r["quality"]) if higher else (r["quality"] - free["quality"])
        if cost <= SMALL_COST[metric]:
            return {"target": target, "label": r["label"], "quality": r["quality"], "free_quality": free["quality"],
                    "activation": r["activation"], "step_ms": r["step_ms"], "free_step_ms": free["step_ms"]}
    return {"target": None, "free_quality": free["quality"]}


def pick(row: dict) -> dict:
    return {k: row[k] for k in ("model", "label", "quality", "step_ms", "steps", "peak_rss_mib", "train_rss_mib")}


def summarise(results: dict) -> dict:
    """Per task: the best model, the fastest, the lightest, the frontier and the cheapest budget."""
    out = {}
    for task, (metric, higher, _) in TASKS.items():
        rows = [r for r in results["rows"] if r["task"] == task]
        if not rows:
            continue
        ranked = sorted(rows, key=lambda r: -r["quality"] if higher else r["quality"])
        frontier = frontier_models(rows, higher)
        labels = {r["model"]: r["label"] for r in rows}
        out[task] = {"metric": metric, "higher_is_better": higher, "minutes": rows[0]["budget_minutes"],
                     "best": pick(ranked[0]), "runner_up": pick(ranked[1]) if len(ranked) > 1 else None,
                     "fastest": pick(min(rows, key=lambda r: r["step_ms"])),
                     "lightest": pick(min(rows, key=lambda r: r["train_rss_mib"])),
                     "frontier": frontier, "frontier_text": ", ".join(labels[k] for k in frontier),
                     "budget": cheapest_budget(rows, metric, higher), "small_cost": SMALL_COST[metric]}
    return out


def write_report(results: dict, stem: Path) -> None:
    """``<stem>.md`` (one table per task) and ``<stem>.png`` (quality against step time)."""
    env, rows = results["machine"], results["rows"]
    commits = ", ".join(sorted({r.get("commit", env["commit"]) for r in rows}) or [env["commit"]])
    text = [f"# Quality against compute{' (quick smoke run)' if results.get('quick') else ''}\n",
            f"Device: {env['device']}, torch {env['torch']}, commit {commits}.\n"]
    if rows:
        loads = [r["load_before"] for r in rows] + [r["load_after"] for r in rows]
        minutes = " / ".join(f"{m:g}" for m in sorted({r["budget_minutes"] for r in rows}))
        threads = " / ".join(str(t) for t in sorted({r["threads"] for r in rows}))
        text.append(f"Each model trained for {minutes} minutes of wall time with {threads} "
                    f"torch thread(s), one model at a time; the 1-minute load average around the runs was "
                    f"{min(loads):.1f} to {max(loads):.1f}.\n")
    for task, s in results.get("summary", {}).items():
        metric = "test accuracy" if s["metric"] == "accuracy" else "test bits per byte (lower is better)"
        text.append(f"## {TASK_TITLES[task]}: {metric}\n")
        text.append(markdown_table(
            ["model", "params", "ms/step", "steps", "peak MiB (rise)",
             "test acc." if s["metric"] == "accuracy" else "test bpc", "activation"],
            [[f"**{r['label']}**" if r["model"] in s["frontier"] else r["label"], r["parameters"], r["step_ms"],
              r["steps"], f"{r['peak_rss_mib']:,.0f} (+{r['train_rss_mib']:,.0f})", r["quality"],
              " ".join(f"{a:.2f}" for a in r["activation"]) if r["activation"] else "-"]
             for r in rows if r["task"] == task]))
    if rows:
        text.append("**Bold**: on the frontier (no other model is both faster per step and better). ms/step: median "
                    "train step (data, forward, backward, optimizer). Peak MiB: the process's peak resident memory; "
                    "in brackets, its rise during training (the rest is Python, torch and the data, the same for all). "
                    "Activation: fraction of tokens each routed layer ran attention on (test split).\n")
    check = results.get("scale_check")
    if check:
        ov = check["overrides"]
        text.append(f"Scale check (`--scale-check`: {check['budget_minutes']:g} minutes, ListOps lengths "
                    f"{ov['data.min_len']}-{ov['data.max_len']}, {ov['data.num_train']:,} train / "
                    f"{ov['data.num_test']:,} test, batch {ov['train.batch_size']}, AdamW {ov['train.lr']:g}, "
                    f"{check['threads']} torch thread(s), load average "
                    f"{check['load_before']:.1f} to {check['load_after']:.1f}): test accuracy {check['accuracy']:.4f} "
                    f"in {check['steps']} steps of {check['step_ms']:,.0f} ms, against "
                    f"{check['reference_accuracy']:.4f} for the official SeqBoat code: "
                    f"**{'pass' if check['passed'] else 'fail'}**.\n")
    stem.with_suffix(".md").write_text("\n".join(text))
    plot(results, stem.with_suffix(".png"))


def place_labels(ax, points: list[tuple[float, float]], labels: list[str]) -> None:
    """Label each point at the first of a ring of offsets where the text overlaps no placed
    label and no other marker (the least-overlapping one when none is free)."""
    renderer = ax.figure.canvas.get_renderer()
    marks = [ax.transData.transform(p) for p in points]
    offsets = [(6, 4), (6, -12), (-6, 4), (-6, -12), (0, 10), (0, -18), (10, -4), (-10, -4), (6, 16), (6, -24)]
    placed = []
    for i, (point, label) in enumerate(zip(points, labels)):
        best = None
        for dx, dy in offsets:
            text = ax.annotate(label, point, xytext=(dx, dy), textcoords="offset points", fontsize=8,
                               ha="left" if dx >= 0 else "right")
            box = text.get_window_extent(renderer).expanded(1.05, 1.15)
            clash = sum(box.overlaps(other) for other in placed) + sum(
                box.contains(*m) for j, m in enumerate(marks) if j != i)
            if best is None or clash < best[0]:
                if best is not None:
                    best[1].remove()
                best = (clash, text, box)
            else:
                text.remove()
            if clash == 0:
                break
        placed.append(best[2])


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    summary = results.get("summary", {})
    if not summary:
        return
    fig, axes = plt.subplots(1, max(len(summary), 1), figsize=(6 * max(len(summary), 1), 4.4), squeeze=False)
    for ax, (task, s) in zip(axes[0], summary.items()):
        rows = [r for r in results["rows"] if r["task"] == task]
        size = [30 + 300 * r["train_rss_mib"] / max(max(x["train_rss_mib"] for x in rows), 1) for r in rows]
        on = [r["model"] in s["frontier"] for r in rows]
        ax.scatter([r["step_ms"] for r in rows], [r["quality"] for r in rows], s=size, alpha=0.6,
                   c=["tab:red" if o else "tab:blue" for o in on])
        front = sorted((r for r in rows if r["model"] in s["frontier"]), key=lambda r: r["step_ms"])
        ax.step([r["step_ms"] for r in front], [r["quality"] for r in front], where="post", color="tab:red",
                lw=1.2, label="frontier")
        ax.set_xscale("log")
        ms = FuncFormatter(lambda v, _: f"{v:,.0f}")
        ax.xaxis.set_major_formatter(ms)
        ax.xaxis.set_minor_formatter(ms)
        ax.tick_params(axis="x", which="minor", labelsize=7)
        better = "higher is better" if s["higher_is_better"] else "lower is better, axis flipped"
        ax.set(xlabel="train step (ms, log scale)", ylabel=f"test {s['metric']} ({better})",
               title=f"{TASK_TITLES[task]}: {s['minutes']:g} min per model\n(marker area: memory rise in training)")
        ax.margins(0.2)
        if not s["higher_is_better"]:
            ax.invert_yaxis()  # better is up in both panels
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="best")
    fig.tight_layout()
    for ax, (task, _) in zip(axes[0], summary.items()):
        rows = [r for r in results["rows"] if r["task"] == task]
        place_labels(ax, [(r["step_ms"], r["quality"]) for r in rows], [r["label"] for r in rows])
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget per model")
    parser.add_argument("--quick", action="store_true", help="tiny data and a few seconds per model (a smoke run)")
    parser.add_argument("--scale-check", action="store_true",
                        help="only run seqboat-listops in the official code's 10-minute setting")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (default: torch's choice, one per core); 1 on a busy machine")
    parser.add_argument("--redo", action="store_true", help="re-run models already in the results")
    parser.add_argument("--text", default=str(SHAKESPEARE), help="text file or folder for char-LM")
    parser.add_argument("--out", default=None, help=f"results folder (default {RESULTS}; a temp folder with --quick)")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec, out = args.worker
        Path(out).write_text(json.dumps(train_one(json.loads(Path(spec).read_text()))))
        return
    if args.minutes <= 0:
        parser.error(f"--minutes must be > 0, got {args.minutes}")
    if args.quick:
        args.minutes = min(args.minutes, QUICK_MINUTES)
    folder = Path(tempfile.gettempdir()) / "smakit-frontier-quick" if args.quick else RESULTS
    folder = Path(args.out) if args.out else folder
    path = folder / f"{NAME}.json"
    results = load_results(path)
    if results.get("rows") and results.get("quick", False) != args.quick:
        parser.error(f"{path} holds {'quick' if results['quick'] else 'full'} results; pass another --out")
    if args.scale_check:
        scale_check(args, results, path)
    else:
        sweep(args, results, path)
    print(f"wrote {path} and {path.with_suffix('.md').name}, {path.with_suffix('.png').name}")


if __name__ == "__main__":
    main()
