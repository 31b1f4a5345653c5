"""Look inside a trained char-LM run: what the router picks and how strongly it gates.

Run: ``python benchmarks/budget_inspect.py RUN_DIR [RUN_DIR ...]`` (run folders of
``benchmarks/budget.py``, e.g. ``/tmp/smakit-budget/charlm-ctl-0.25``) from the repository
root. Prints one JSON line per run (``results/budget_inspect.jsonl`` holds them for
``charlm-free`` and ``charlm-ctl-0.25``), on the first ``--batches`` test batches:

* ``gate``: mean (and 10/50/90% quantiles) of the gate of the tokens each layer ran on;
* ``routed_by_class``: fraction of spaces, newlines, letters and other bytes each layer ran on;
* ``nll_routed`` / ``nll_skipped``: mean next-byte loss (nats) at routed and skipped positions;
* for a free run, ``restricted``: test bpc when a budget controller is added *after*
  training (its bias set on 20 training batches) at 0.5 / 0.25 / 0.1 of the tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from smakit.cli import _restore  # noqa: E402
from smakit.data.base import IGNORE_INDEX  # noqa: E402
from smakit.routing.budget import BudgetController  # noqa: E402
from smakit.sma import SparseModularActivation  # noqa: E402


def routed_layers(model):
    return [m for m in model.modules() if isinstance(m, SparseModularActivation)]


def byte_class(b: int) -> str:
    c = chr(b)
    return "space" if c == " " else "newline" if c == "\n" else "letter" if c.isalpha() else "other"


@torch.no_grad()
def inspect_routing(trainer, batches: int) -> list[dict]:
    trainer.model.eval()
    layers = routed_layers(trainer.model)
    gates = [[] for _ in layers]
    routed, total = [Counter() for _ in layers], Counter()
    nll = [torch.zeros(4) for _ in layers]  # routed sum, routed n, skipped sum, skipped n
    for i, batch in enumerate(trainer._loader("test")):
        if i >= batches:
            break
        inputs, mask, targets = trainer._to_device(batch)
        loss = F.cross_entropy(trainer.model(inputs, mask=mask).transpose(1, 2), targets, reduction="none",
                               ignore_index=IGNORE_INDEX)
        classes = [byte_class(b) for b in inputs.flatten().tolist()]
        total.update(classes)
        for j, m in enumerate(layers):
            active = m.stats.active[0]
            gates[j].append(m.stats.gate[0][active])
            routed[j].update(c for c, a in zip(classes, active.flatten().tolist()) if a)
            nll[j] += torch.stack([loss[active].sum(), active.sum(), loss[~active].sum(), (~active).sum()]).float()
    out = []
    for j in range(len(layers)):
        g = torch.cat(gates[j])
        q = g.quantile(torch.tensor([0.1, 0.5, 0.9])).tolist() if g.numel() else []
        out.append({"gate": round(g.mean().item(), 3) if g.numel() else None, "gate_q10_50_90": [round(x, 3) for x in q],
                    "routed_by_class": {k: round(routed[j][k] / total[k], 3) for k in sorted(total)},
                    "nll_routed": round((nll[j][0] / nll[j][1].clamp(min=1)).item(), 3),
                    "nll_skipped": round((nll[j][2] / nll[j][3].clamp(min=1)).item(), 3)})
    trainer.model.train()
    return out


def restricted(trainer, target: float) -> float:
    """Test bpc of the trained model with a controller added now, its bias set on training batches."""
    for m in routed_layers(trainer.model):
        m.router.budget = BudgetController(1, target, rate=0.5)
    trainer.model.train()
    with torch.no_grad():
        for i, batch in enumerate(trainer._loader("train")):
            if i >= 20:
                break
            inputs, mask, _ = trainer._to_device(batch)
            trainer.model(inputs, mask=mask)
    report = trainer.evaluate("test")
    for m in routed_layers(trainer.model):
        m.router.budget = None
    return round(report["bpc"], 3)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    for run in args.runs:
        trainer = _restore(run, "cpu")
        report = {"run": run, "layers": inspect_routing(trainer, args.batches)}
        if routed_layers(trainer.model)[0].router.budget is None:
            report["restricted"] = {t: restricted(trainer, t) for t in (0.5, 0.25, 0.1)}
        print(json.dumps(report))


if __name__ == "__main__":
    main()
