"""Per-class accuracy, the majority-class baseline and a confusion matrix for classification runs.

``smakit train`` calls :func:`write_report` after the test evaluation of a classification
recipe: the numbers go into ``summary.json`` (key ``classification``) and the printed
summary, the picture into ``confusion_matrix.png``.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ..data import majority_baseline
from .plots import Figure, _save

CONFUSION_PNG = "confusion_matrix.png"


@torch.no_grad()
def predict(model, dataset, collate, device, batch_size: int = 32, amp=nullcontext) -> tuple[Tensor, Tensor]:
    """``(predictions [N], targets [N])`` of ``model`` on every item of ``dataset``, in order.

    ``amp`` makes a fresh context for each forward (e.g. a ``torch.autocast``)."""
    was_training = model.training
    model.eval()
    preds, targets = [], []
    for inputs, mask, y in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
        with amp():
            logits = model(inputs.to(device), mask=mask.to(device))
        preds.append(logits.argmax(-1).cpu())
        targets.append(y)
    model.train(was_training)
    return torch.cat(preds), torch.cat(targets)


def confusion_matrix(preds: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """``[C, C]`` counts: row = true class, column = predicted class.

    Examples::

        >>> pred, target = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2])
        >>> confusion_matrix(pred, target, 3).tolist()
        [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    """
    if preds.shape != targets.shape:
        raise ValueError(f"preds and targets must have the same shape, got {tuple(preds.shape)} "
                         f"and {tuple(targets.shape)}")
    index = targets.long() * num_classes + preds.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def report_from_confusion(confusion: Tensor, classes: list[str], majority_class: int,
                          majority_accuracy: float | None = None) -> dict:
    """Accuracy, per-class accuracy (recall) and support, with the majority-class baseline.

    Args:
        confusion (Tensor): ``[C, C]`` from :func:`confusion_matrix`.
        classes (list[str]): class names, index = class id.
        majority_class (int): the most frequent training class.
        majority_accuracy (float, optional): accuracy of always predicting it on this split.
            Default: computed from the confusion matrix's row sums.

    Examples::

        >>> c = confusion_matrix(torch.tensor([0, 0, 1, 0]), torch.tensor([0, 0, 1, 1]), 2)
        >>> r = report_from_confusion(c, ["neg", "pos"], majority_class=0)
        >>> r["accuracy"], r["per_class_accuracy"], r["majority_accuracy"]
        (0.75, {'neg': 1.0, 'pos': 0.5}, 0.5)
    """
    support = confusion.sum(1)
    total = int(support.sum())
    correct = confusion.diagonal()
    per_class = {name: (int(correct[i]) / int(support[i]) if support[i] else None) for i, name in enumerate(classes)}
    if majority_accuracy is None:
        majority_accuracy = int(support[majority_class]) / max(total, 1)
    return {
        "classes": list(classes),
        "accuracy": int(correct.sum()) / max(total, 1),
        "per_class_accuracy": per_class,
        "support": {name: int(support[i]) for i, name in enumerate(classes)},
        "majority_class": classes[majority_class],
        "majority_accuracy": majority_accuracy,
        "confusion": confusion.tolist(),
    }


def plot_report(report: dict, out_png: Path, title: str = "") -> Path:
    """Confusion matrix (counts) beside per-class accuracy bars, with the majority baseline."""
    classes, conf = report["classes"], torch.tensor(report["confusion"])
    C = len(classes)
    fig = Figure(figsize=(4 + 0.5 * C + 4, 3 + 0.3 * C))  # not pyplot: the user's backend stays
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1]})
    rows = conf.sum(1, keepdim=True).clamp(min=1)
    left.imshow((conf / rows).numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(C):
        for j in range(C):
            shade = "white" if conf[i, j] / rows[i, 0] > 0.6 else "black"
            left.text(j, i, str(int(conf[i, j])), ha="center", va="center", fontsize=8, color=shade)
    left.set_xticks(range(C), classes, rotation=45 if C > 4 else 0, ha="right" if C > 4 else "center")
    left.set_yticks(range(C), classes)
    left.set(xlabel="predicted", ylabel="true", title="confusion matrix (counts)")
    acc = [report["per_class_accuracy"][c] or 0.0 for c in classes]
    right.bar(range(C), acc, color="tab:blue")
    right.axhline(report["accuracy"], color="tab:green", label=f"accuracy {report['accuracy']:.3f}")
    right.axhline(report["majority_accuracy"], color="tab:red", ls="--",
                  label=f"majority class ({report['majority_class']}) {report['majority_accuracy']:.3f}")
    right.set_xticks(range(C), classes, rotation=45 if C > 4 else 0, ha="right" if C > 4 else "center")
    right.set(ylim=(0, 1.05), ylabel="accuracy", title="per-class accuracy")
    right.legend(fontsize=7, loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, Path(out_png))


def format_report(report: dict) -> str:
    """Printed lines: per-class accuracy with support, and the majority baseline.

    Examples::

        >>> c = confusion_matrix(torch.tensor([0, 0, 1, 0]), torch.tensor([0, 0, 1, 1]), 2)
        >>> print(format_report(report_from_confusion(c, ["neg", "pos"], 0)))
        per-class accuracy (examples): neg 1.000 (2), pos 0.500 (2); majority class neg
    """
    parts = []
    for name in report["classes"]:
        acc = report["per_class_accuracy"][name]
        parts.append(f"{name} {'-' if acc is None else f'{acc:.3f}'} ({report['support'][name]})")
    return f"per-class accuracy (examples): {', '.join(parts)}; majority class {report['majority_class']}"


def class_names(dataset, num_classes: int) -> list[str]:
    """The dataset's ``classes`` when it has them, else the ids as strings."""
    names = getattr(dataset, "classes", None)
    return [str(c) for c in names] if names is not None else [str(i) for i in range(num_classes)]


def write_report(trainer, out_dir, split: str = "test", confusion: list | None = None) -> dict:
    """The report of a trained :class:`~smakit.train.Trainer` on ``split``: write the PNG, return it.

    ``confusion`` (``[C, C]`` counts from ``trainer.evaluate(split, confusion=True)``) saves a
    second pass over the data; without it the split is predicted here.
    """
    from .build import collate_fn
    from .loop import autocast_for

    data = trainer.data[split]
    C = trainer.info.num_classes
    if confusion is None:
        preds, targets = predict(trainer.model, data, collate_fn(trainer.info, trainer.recipe.data), trainer.device,
                                 trainer.cfg.batch_size, lambda: autocast_for(trainer.device, trainer.cfg.amp))
        confusion = confusion_matrix(preds, targets, C)
    majority, majority_acc = majority_baseline(trainer.data["train"], data)
    report = report_from_confusion(torch.as_tensor(confusion), class_names(data, C), majority, majority_acc)
    report["split"] = split
    png = plot_report(report, Path(out_dir) / CONFUSION_PNG, f"{trainer.recipe.name}: {split} split")
    report["plot"] = str(png)
    return report
