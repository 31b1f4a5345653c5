"""One recipe end to end: train, test, plot, summarise (what ``smakit train`` runs)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import majority_baseline
from ..data.listops import VOCAB
from .classification_report import format_report, write_report
from .config import Recipe
from .loop import Trainer
from .rundir import atomic_write, dumps


def pattern_kind(name: str) -> str:
    return {"listops": "listops", "image": "image", "audio": "audio"}.get(name, "tokens")


def run(recipe: Recipe, out_dir, device: str | None = None, progress: bool = True) -> dict:
    """Train ``recipe`` into ``out_dir`` (resuming if a checkpoint is there), evaluate on the
    test split, write ``summary.json`` and the plots; returns the summary."""
    trainer = Trainer(recipe, out_dir, device=device, progress=progress)
    done = False
    try:
        with trainer.claim():
            summary = _train_and_report(trainer, trainer.out)
        done = True
    finally:
        # done: every rank meets rank 0 (its plots and summary written) before the group ends;
        # an error: the other ranks may be anywhere, so no barrier
        trainer.close(clean=done)
    return summary


def _train_and_report(trainer: Trainer, out: Path) -> dict:
    recipe = trainer.recipe
    timing = trainer.train()
    test = trainer.evaluate("test", confusion=True)  # one pass gives the metrics and the report
    confusion = test.pop("confusion", None)
    summary = {"recipe": recipe.name, "preset": recipe.preset, **timing, "test": test, "best": trainer.best,
               "parameters": sum(p.numel() for p in trainer.model.parameters())}
    if trainer.info.task == "classification":
        cls, acc = majority_baseline(trainer.data["train"], trainer.data["test"])
        summary["majority_class"], summary["majority_accuracy"] = cls, acc
    if trainer.ctx.is_main:
        summary["plots"] = write_plots(trainer, out)
        if trainer.info.task == "classification":  # per-class accuracy, confusion matrix PNG
            summary["classification"] = write_report(trainer, out, confusion=confusion)
            summary["plots"].append(summary["classification"]["plot"])
        with atomic_write(out / "summary.json") as f:
            f.write(dumps(summary, indent=2))
    return summary


def write_plots(trainer: Trainer, out: Path) -> list[str]:
    """``learning_curves.png`` and ``activation_pattern.png`` (one test example)."""
    from .plots import (  # matplotlib: only when plotting
        activation_pattern,
        learning_curves,
        routing_pattern,
    )

    paths = [learning_curves(out / "metrics.jsonl", out / "learning_curves.png", trainer.recipe.name)]
    inputs, target = trainer.data["test"][0]
    x = inputs.unsqueeze(0).to(trainer.device)
    mask = torch.ones(x.shape[:2], dtype=torch.bool, device=trainer.device)
    pattern = routing_pattern(trainer.model, x, mask)
    kind = pattern_kind(trainer.info.name)
    names = VOCAB if kind == "listops" else None
    title = f"{trainer.recipe.name}: where each layer routed tokens (test example 0, target {target if torch.as_tensor(target).dim() == 0 else '...'})"
    paths.append(activation_pattern(pattern, inputs, out / "activation_pattern.png", kind, title, names))
    return [str(p) for p in paths]


def _preset_text(preset) -> str:
    return "no preset" if preset is None else f"{preset} preset"


def format_metrics(metrics: dict) -> list[str]:
    """Readable lines for one split's metrics (``Trainer.evaluate``'s dict)."""
    split = metrics.get("split", "test")
    if "bpc" in metrics:
        lines = [f"{split} bits per byte: {metrics['bpc']:.4f} (loss {metrics['loss']:.4f})"]
    else:
        lines = [f"{split} accuracy: {metrics['accuracy']:.4f} (loss {metrics['loss']:.4f})"]
    if metrics.get("activation"):
        ratios = ", ".join(f"layer {i}: {r:.2f}" for i, r in enumerate(metrics["activation"]))
        lines.append(f"activation ratio per layer: {ratios}")
    return lines


def format_eval(report: dict) -> str:
    """Readable lines for ``smakit eval``: which checkpoint, then its metrics."""
    head = (f"checkpoint {report['checkpoint']}: recipe {report['recipe']} ({_preset_text(report['preset'])}), "
            f"step {report['step']}, {report['parameters']:,} parameters")
    lines = format_metrics(report["metrics"])
    if "majority_accuracy" in report:
        lines.insert(1, f"majority-class baseline: {report['majority_accuracy']:.4f} "
                        f"(always class {report['majority_class']})")
    return "\n".join([head, *lines])


def format_summary(summary: dict) -> str:
    """Human-readable lines for the end of a run."""
    test = summary["test"]
    lines = [f"recipe {summary['recipe']} ({_preset_text(summary['preset'])}): {summary['steps']} steps "
             f"in {summary['minutes']:.1f} min, {summary['parameters']:,} parameters"]
    metric_lines = format_metrics(test)
    lines.append(metric_lines[0])
    if "majority_accuracy" in summary:
        lines.append(f"majority-class baseline: {summary['majority_accuracy']:.4f} (always class {summary['majority_class']})")
    if "classification" in summary:
        lines.append(format_report(summary["classification"]))
    lines += metric_lines[1:]
    best = summary.get("best")
    if best:
        lines.append(f"best checkpoint: best.pt ({best['metric']} {best['value']:.4f} at step {best['step']})")
    for p in summary.get("plots", []):
        lines.append(f"plot: {p}")
    return "\n".join(lines)
