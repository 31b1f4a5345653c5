"""One recipe end to end: train, test, plot, summarise (what ``smakit train`` runs)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data import majority_baseline
from ..data.listops import VOCAB
from .classification_report import format_report, write_report
from .config import Recipe
from .loop import Trainer
from .plots import activation_pattern, learning_curves, routing_pattern


def pattern_kind(name: str) -> str:
    return {"listops": "listops", "image": "image", "audio": "audio"}.get(name, "tokens")


def run(recipe: Recipe, out_dir, device: str | None = None, progress: bool = True) -> dict:
    """Train ``recipe`` into ``out_dir`` (resuming if a checkpoint is there), evaluate on the
    test split, write ``summary.json`` and the plots; returns the summary."""
    out = Path(out_dir)
    trainer = Trainer(recipe, out, device=device, progress=progress)
    timing = trainer.train()
    test = trainer.evaluate("test")
    summary = {"recipe": recipe.name, "preset": recipe.preset, **timing, "test": test,
               "parameters": sum(p.numel() for p in trainer.model.parameters())}
    if trainer.info.task == "classification":
        cls, acc = majority_baseline(trainer.data["train"], trainer.data["test"])
        summary["majority_class"], summary["majority_accuracy"] = cls, acc
    if trainer.ctx.is_main:
        summary["plots"] = write_plots(trainer, out)
        if trainer.info.task == "classification":  # per-class accuracy, confusion matrix PNG
            summary["classification"] = write_report(trainer, out)
            summary["plots"].append(summary["classification"]["plot"])
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def write_plots(trainer: Trainer, out: Path) -> list[str]:
    """``learning_curves.png`` and ``activation_pattern.png`` (one test example)."""
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


def format_summary(summary: dict) -> str:
    """Human-readable lines for the end of a run."""
    test = summary["test"]
    lines = [f"recipe {summary['recipe']} ({summary['preset']} preset): {summary['steps']} steps "
             f"in {summary['minutes']:.1f} min, {summary['parameters']:,} parameters"]
    if "bpc" in test:
        lines.append(f"test bits per byte: {test['bpc']:.4f} (loss {test['loss']:.4f})")
    else:
        lines.append(f"test accuracy: {test['accuracy']:.4f}")
    if "majority_accuracy" in summary:
        lines.append(f"majority-class baseline: {summary['majority_accuracy']:.4f} (always class {summary['majority_class']})")
    if "classification" in summary:
        lines.append(format_report(summary["classification"]))
    if test.get("activation"):
        ratios = ", ".join(f"layer {i}: {r:.2f}" for i, r in enumerate(test["activation"]))
        lines.append(f"activation ratio per layer: {ratios}")
    for p in summary.get("plots", []):
        lines.append(f"plot: {p}")
    return "\n".join(lines)
