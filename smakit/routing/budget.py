"""A controller that holds a router's realised activation ratio at a target."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as tdist
from torch import Tensor, nn


def check_density_target(target, num_modules: int, name: str = "density_target") -> list[float]:
    """``target`` (a float or ``num_modules`` floats in ``[0, 1]``) as a list of ``num_modules`` floats."""
    values = list(target) if isinstance(target, (list, tuple)) else [target]
    if len(values) == 1:
        values = values * num_modules
    ok = len(values) == num_modules and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values)
    if not ok:
        raise ValueError(f"{name} must be a fraction in [0, 1] or a list of {num_modules} fractions "
                         f"(one per module), got {target!r}")
    return [float(v) for v in values]


def _offsets(size: int = 129, reach: float = 10.0, finest: float = 1e-2) -> Tensor:
    """Candidate bias moves, symmetric, geometric: fine near 0, reaching ``+-reach``."""
    u = torch.linspace(-1, 1, size, dtype=torch.float64)
    return (u.sign() * finest * (torch.exp(u.abs() * torch.log(torch.tensor(1 + reach / finest))) - 1)).float()


def _sum_over_ranks(t: Tensor) -> Tensor:
    if tdist.is_available() and tdist.is_initialized():
        tdist.all_reduce(t)
    return t


class BudgetController(nn.Module):
    """Holds a router's realised activation ratio at a target with a bias on the module scores.

    Holds ``bias [M]``, added to each module's score (a buffer: no gradient, no weight decay).
    After each training forward it measures, for a grid of candidate moves ``g`` of module
    ``m``'s bias, the fraction of real tokens the argmax would then send to ``m`` (counts
    summed over DDP ranks, so every rank applies the same update), reads off the move ``g*``
    that gives exactly the target on this batch, and steps ``bias += rate * g*``. This
    feedback on the realised decision converges whatever the spread of the router's scores
    (an integral step ``rate * (target - realised)`` oscillates when many tokens sit at one
    score, as on ListOps); the task loss still decides *which* tokens run. Both ``target`` and
    ``bias`` are buffers, so they are in ``state_dict`` and a resumed run continues exactly.

    Args:
        num_modules (int): ``M``.
        target (float or list[float]): wanted ratio, one for all modules or one per module.
        rate (float): fraction of the way to this batch's exact bias per step, in ``(0, 1]``
            (smaller averages over more batches). Default: 0.5.

    Examples::

        >>> ctl = BudgetController(1, 0.25, rate=1.0)
        >>> # [B, L, 1 + M]: skip scores 0, module scores 1..4
        >>> scores = torch.tensor([[[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 4.0]]])
        >>> ctl.update(scores, None)  # all 4 tokens ran: the bias drops below all but one
        >>> bool(-4 < ctl.bias.item() < -3)
        True
    """

    def __init__(self, num_modules: int, target, rate: float = 0.5):
        super().__init__()
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise ValueError(f"density_rate must be a float in (0, 1], got {rate!r}")
        self.rate = float(rate)
        self.register_buffer("target", torch.tensor(check_density_target(target, num_modules)))
        self.register_buffer("bias", torch.zeros(num_modules))
        self._pending: list[Tensor] | None = None  # counts of micro-batches while accumulating

    def reset(self) -> None:
        self.bias.zero_()

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name in ("target", "bias"):  # the controller's state stays float32 under .half()/.to(dtype)
            if getattr(self, name).dtype != torch.float32:
                setattr(self, name, getattr(self, name).float())
        return self

    @torch.no_grad()
    def update(self, scores: Tensor, mask: Tensor | None) -> None:
        """One step from the scores that made the decision (``[B, L, 1 + M]``, option 0 =
        skip, bias included) and ``mask [B, L]`` (True = real token). Inside
        :func:`accumulate_budgets` the counts wait for the end of the block instead."""
        counts = self._counts(scores, mask)
        if self._pending is not None:
            self._pending.append(counts)
        else:
            self._step(counts)

    def _counts(self, scores: Tensor, mask: Tensor | None) -> Tensor:
        """``[M, K + 1]`` int64: for each candidate move, the real tokens module ``m`` would
        win; the last column counts the real tokens."""
        M = scores.shape[-1] - 1
        s = scores.detach().float().reshape(-1, M + 1)  # [N, 1 + M]
        real = torch.ones(s.shape[0], dtype=torch.bool, device=s.device) if mask is None else mask.reshape(-1)
        real = real & s.isfinite().all(-1)  # tokens the router never routes
        others = s.unsqueeze(1).expand(-1, M, -1).clone()  # [N, M, 1 + M]
        others[:, torch.arange(M), torch.arange(1, M + 1)] = float("-inf")
        margin = s[:, 1:] - others.amax(-1)  # [N, M]: module m wins iff margin + move > 0
        margin = torch.where(real.unsqueeze(-1), margin, float("-inf")).t().contiguous()  # [M, N]
        moves = _offsets().to(s.device)  # [K]
        # tokens with margin > -move, for each move, by counting in the sorted margins
        below = torch.searchsorted(margin.sort(-1).values, (-moves).expand(M, -1).contiguous(), right=True)
        return torch.cat([margin.shape[1] - below, real.sum().expand(M, 1)], -1)  # int64: exact sums

    def _step(self, counts: Tensor) -> None:
        """Move the bias toward the value that gives the target on ``counts`` (all ranks)."""
        counts = _sum_over_ranks(counts)  # [M, K + 1]
        moves = _offsets().to(counts.device)
        n = counts[:, -1:].float()
        ratio = counts[:, :-1].float() / n.clamp(min=1)  # [M, K], nondecreasing in the move
        t = self.target.float().unsqueeze(-1)
        k = torch.searchsorted(ratio, t).clamp(1, moves.numel() - 1)  # first move reaching the target
        r_lo, r_hi = ratio.gather(-1, k - 1), ratio.gather(-1, k)
        frac = ((t - r_lo) / (r_hi - r_lo)).nan_to_num(1.0).clamp(0, 1)
        best = moves[k - 1] + frac * (moves[k] - moves[k - 1])  # [M, 1]
        self.bias.add_(torch.where(n > 0, self.rate * best, 0.0).squeeze(-1).to(self.bias.dtype))

    def extra_repr(self) -> str:
        return f"target={[round(t, 4) for t in self.target.tolist()]}, rate={self.rate}"


@contextmanager
def accumulate_budgets(model: nn.Module):
    """Hold every budget controller in ``model`` still for a block of micro-batches, then step
    each once on their summed counts, as one forward of the whole batch would.

    Gradient accumulation then equals one big batch for a budgeted model too: every
    micro-batch is routed with the same bias. On an exception no step is taken.

    Examples::

        >>> from smakit import sma
        >>> layer = sma(nn.Linear(8, 8), dim=8, density_target=0.5)
        >>> with accumulate_budgets(layer):
        ...     for _ in range(2):
        ...         _ = layer(torch.randn(2, 6, 8))
        ...     held = layer.router.budget.bias.clone()
        >>> bool((held == 0).all()), bool((layer.router.budget.bias != 0).any())
        (True, True)
    """
    controllers = [m for m in model.modules() if isinstance(m, BudgetController)]
    for c in controllers:
        c._pending = []
    try:
        yield
    except BaseException:
        for c in controllers:
            c._pending = None
        raise
    for c in controllers:
        pending, c._pending = c._pending, None
        if pending:
            c._step(torch.stack(pending).sum(0))
