"""``smakit train`` with one probe patched in, to find what a budget costs (used by ``budget.py``).

Run: ``python benchmarks/budget_probes.py PROBE train RECIPE [overrides...]`` where PROBE is

* ``random_router``: the router's scores are Gaussian noise (std 3), drawn anew every forward,
  so the budget controller still holds the ratio but the choice of tokens is not learned;
* ``all_keys``: the attention runs on every token (queries and keys), and only the routed
  tokens keep its output, times the gate: what routing the queries alone would give;
* ``target_warmup``: the controller's target anneals linearly from 1 to ``density_target``
  over the first 200 training forwards (attention learns on every token before it is
  restricted).

Probes answer "what if", at full compute; they are not smakit features.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from smakit.cli import main  # noqa: E402
from smakit.models import seqboat  # noqa: E402
from smakit.routing import threshold  # noqa: E402
from smakit.routing.budget import BudgetController  # noqa: E402

WARMUP = 200


def noise_scores(x, proj):
    logits = ORIGINAL_PROJECT(x, proj)  # kept in the graph (times 0), so backward runs as before
    return logits * 0 + 3.0 * torch.randn_like(logits)


def all_keys_forward(self, x, mask=None):
    if self.mode != "sparse":
        return ORIGINAL_FORWARD(self, x, mask)
    _, h = self._state_input(x, mask)
    routing = self.attn.router(h, mask)
    y = self.attn.module(h, mask=mask)  # every token attends over every token of its window
    out = self.bypass(h) + y * routing.gate[0].unsqueeze(-1).to(y.dtype)
    self.attn._record(routing, routing.active)
    self._ratio = self.attn.stats.ratio[0]
    return self._finish(out, x, h)


def warmup_update(self, scores, mask):
    done = min(getattr(self, "probe_updates", 0) / WARMUP, 1.0)
    self.probe_updates = getattr(self, "probe_updates", 0) + 1
    target = self.target.clone()
    self.target.copy_(1 - (1 - target) * done)
    try:
        ORIGINAL_UPDATE(self, scores, mask)
    finally:
        self.target.copy_(target)


ORIGINAL_FORWARD, ORIGINAL_UPDATE = seqboat.SeqBoatLayer.forward, BudgetController.update
ORIGINAL_PROJECT = threshold.project_option_major
PROBES = {"random_router": lambda: setattr(threshold, "project_option_major", noise_scores),
          "all_keys": lambda: setattr(seqboat.SeqBoatLayer, "forward", all_keys_forward),
          "target_warmup": lambda: setattr(BudgetController, "update", warmup_update)}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in PROBES:
        sys.exit(f"usage: budget_probes.py {{{','.join(PROBES)}}} train RECIPE [overrides...]")
    PROBES[sys.argv[1]]()
    sys.exit(main(sys.argv[2:]))
