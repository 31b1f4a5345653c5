"""PNG plots written by every run: learning curves and where the routers spent compute.

Figures are drawn on ``matplotlib.figure.Figure`` (no ``pyplot``), so importing this
module leaves the user's matplotlib backend alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

try:
    from matplotlib.figure import Figure
except ImportError:  # the `train` extra is missing; Trainer.train says so before any plot
    Figure = None
from torch import nn

from ..routing.stats import collect_routing_stats
from .rundir import atomic_write


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl``; ``null`` (a non-finite value) reads as NaN."""
    if not Path(path).exists():
        return []
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [{k: math.nan if v is None else v for k, v in r.items()} for r in records]


def _save(fig: Figure, out_png: Path) -> Path:
    with atomic_write(out_png, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    return out_png


def learning_curves(metrics_path: Path, out_png: Path, title: str = "") -> Path:
    """Loss, accuracy (or bits per byte) and activation ratio against the step."""
    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    lm = any("bpc" in r for r in records)
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    ax = axes[0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", alpha=0.8)
    ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="validation")
    ax.set(xlabel="step", ylabel="loss", title="loss")
    ax.legend()
    key = "bpc" if lm else "accuracy"
    ax = axes[1]
    ax.plot([r["step"] for r in train], [r[key] for r in train], label="train", alpha=0.8)
    ax.plot([r["step"] for r in evals], [r[key] for r in evals], "o-", label="validation")
    ax.set(xlabel="step", ylabel=key, title="bits per byte" if lm else "accuracy")
    ax.legend()
    ax = axes[2]
    layers = max((len(r.get("activation") or []) for r in train), default=0)
    for i in range(layers):
        pts = [(r["step"], r["activation"][i]) for r in train if r.get("activation")]
        ax.plot(*zip(*pts), label=f"layer {i}")
    ax.set(xlabel="step", ylabel="fraction of tokens routed", title="activation ratio", ylim=(0, 1.05))
    if layers:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no routed layers", ha="center", transform=ax.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out_png)


@torch.no_grad()
def routing_pattern(model: nn.Module, inputs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``[layers, L]`` bool: which tokens each routed layer sent to a module, for one example.

    ``inputs`` is one example with a batch dim of 1. Multi-module layers are collapsed to
    "any module".
    """
    was_training = model.training
    model.eval()
    model(inputs, mask=mask)
    model.train(was_training)
    stats = collect_routing_stats(model, routed_only=True)
    if not stats:
        return torch.zeros(0, inputs.shape[1], dtype=torch.bool)
    return torch.stack([s.active.any(0)[0] for s in stats.values()]).cpu()


LISTOPS_STYLE = {"operator": "tab:red", "digit": "tab:blue", "close": "tab:gray"}


def activation_pattern(pattern: torch.Tensor, inputs: torch.Tensor, out_png: Path, kind: str = "tokens",
                       title: str = "", token_names: list[str] | None = None) -> Path:
    """Plot the routing pattern under the input it was computed on.

    Args:
        pattern (Tensor): ``[layers, L]`` bool from :func:`routing_pattern`.
        inputs (Tensor): the example, ``[L]`` ids or ``[L, C]`` features.
        kind (str): ``"tokens"``, ``"listops"``, ``"image"`` (square pixel grid) or ``"audio"``.
        token_names (list[str], optional): names of the token ids (for ``"listops"`` colouring).
    """
    n_layers, L = pattern.shape
    inputs = inputs.cpu()
    if kind == "image" and n_layers:
        return _image_pattern(pattern, inputs, out_png, title)
    fig = Figure(figsize=(12, 1.6 + 0.35 * max(n_layers, 1)))
    axes = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, max(n_layers, 1) * 0.6]})
    top, bottom = axes
    if kind == "audio":
        top.plot(inputs.reshape(L, -1)[:, 0].numpy(), lw=0.4)
        top.set_ylabel("signal")
    elif kind == "listops" and token_names is not None:
        names = [token_names[i] for i in inputs.tolist()]
        for cls, colour in LISTOPS_STYLE.items():
            xs = [i for i, n in enumerate(names) if _listops_class(n) == cls]
            top.vlines(xs, 0, 1, colors=colour, lw=0.8, label=cls)
        top.legend(loc="upper right", fontsize=7, ncol=3)
        top.set_yticks([])
    else:
        top.imshow(inputs.reshape(1, L, -1)[..., 0].float().numpy(), aspect="auto", cmap="viridis",
                   interpolation="nearest")
        top.set_yticks([])
    top.set_title(title or "input")
    if n_layers:
        bottom.imshow(pattern.float().numpy(), aspect="auto", cmap="Greys", interpolation="nearest",
                      vmin=0, vmax=1)
        bottom.set_yticks(range(n_layers), [f"layer {i}" for i in range(n_layers)])
    bottom.set_xlabel("position (black: routed to the module)")
    fig.tight_layout()
    return _save(fig, out_png)


def _listops_class(name: str) -> str:
    if name == "]":
        return "close"
    return "digit" if name.isdigit() else "operator"


def _image_pattern(pattern, inputs, out_png, title):
    n_layers, L = pattern.shape
    side = math.isqrt(L)
    fig = Figure(figsize=(2.2 * (n_layers + 1), 2.6))
    axes = fig.subplots(1, n_layers + 1)
    axes[0].imshow(inputs.reshape(L, -1)[: side * side, 0].float().reshape(side, side).numpy(), cmap="gray")
    axes[0].set_title("input", fontsize=8)
    for i in range(n_layers):
        axes[i + 1].imshow(pattern[i, : side * side].float().reshape(side, side).numpy(), cmap="Greys",
                           vmin=0, vmax=1)
        axes[i + 1].set_title(f"layer {i}: {pattern[i].float().mean():.0%}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, out_png)
