"""A controller that holds a router's realised activation ratio at a target."""

from __future__ import annotations

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


def realised_ratio(active: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(counts [M], n_real [])`` float64: tokens each module ran on, and real tokens, summed
    over the DDP ranks when ``torch.distributed`` is initialised."""
    real = active if mask is None else active & mask
    n = torch.tensor(float(active[0].numel()), device=active.device) if mask is None else mask.sum()
    sums = torch.cat([real.sum((1, 2)).double(), n.double().reshape(1)])
    if tdist.is_available() and tdist.is_initialized():
        tdist.all_reduce(sums)
    return sums[:-1], sums[-1]


class BudgetController(nn.Module):
    """Integral controller on the skip-vs-module decision of a router.

    Holds ``bias [M]``, added to each module's score (not a parameter: no gradient, no weight
    decay). After each training forward, ``bias += rate * (target - realised)``, with
    *realised* the fraction of real tokens the module ran on (the argmax decision, summed over
    DDP ranks, so every rank applies the same update). The bias is the integral of the error,
    so the ratio settles on the target whatever the router's weights learn; the task loss
    still decides *which* tokens run. Both ``target`` and ``bias`` are buffers, so they are in
    ``state_dict`` and a resumed run continues exactly.

    Args:
        num_modules (int): ``M``.
        target (float or list[float]): wanted ratio, one for all modules or one per module.
        rate (float): step per unit of ratio error, in units of the router's scaled logits.
            Default: 1.0.

    Examples::

        >>> ctl = BudgetController(1, 0.25)
        >>> ctl.update(torch.ones(1, 2, 4, dtype=torch.bool), None)  # everything ran: lower the bias
        >>> ctl.bias
        tensor([-0.7500])
    """

    def __init__(self, num_modules: int, target, rate: float = 1.0):
        super().__init__()
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0:
            raise ValueError(f"density_rate must be a positive float, got {rate!r}")
        self.rate = float(rate)
        self.register_buffer("target", torch.tensor(check_density_target(target, num_modules)))
        self.register_buffer("bias", torch.zeros(num_modules))

    def reset(self) -> None:
        self.bias.zero_()

    @torch.no_grad()
    def update(self, active: Tensor, mask: Tensor | None) -> None:
        """One controller step from a decision ``active [M, B, L]`` (``mask [B, L]``: real tokens)."""
        counts, n = realised_ratio(active, mask)
        error = self.target.double() - counts / n.clamp(min=1)
        self.bias.add_(torch.where(n > 0, self.rate * error, 0.0).to(self.bias.dtype))

    def extra_repr(self) -> str:
        return f"target={[round(t, 4) for t in self.target.tolist()]}, rate={self.rate}"
