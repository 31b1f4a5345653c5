"""The routing result shared by every router, input checks, and the density regulariser."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from .._deprecation import warn_renamed


@dataclass
class Routing:
    """One routing decision for a batch.

    Two layouts, named by what they index. The decision is **module-major**, ``[M, B, L]``,
    so ``active[m]`` is the ``[B, L]`` mask that :func:`~smakit.compress` takes for module
    ``m``. The router's scores are **option-last**, ``[B, L, O]``, as its projection gives
    them and a softmax reads them; ``O = 1 + M`` for the threshold router (option 0 is
    "skip") and ``O = M`` for top-k. :meth:`module_probs` gives the probabilities
    module-major.

    Attributes:
        active (Tensor): ``[M, B, L]`` bool, True where module ``m`` runs on the token.
        gate (Tensor): ``[M, B, L]`` float32, the multiplier of module ``m``'s output
            (the router's probability; 0 where the module is inactive).
        logits (Tensor): ``[B, L, O]`` float32 router scores, one per option.
        probs (Tensor): ``[B, L, O]`` float32, the probability of each option (per module
            selection probability for top-k).
        slots (int or None): slots per row when fixed in advance (top-k: ``ceil(capacity *
            L)``), so the compaction needs no host sync; ``None`` when data dependent.
        mask (Tensor or None): ``[B, L]`` bool padding mask the decision honoured.
    """

    active: Tensor
    gate: Tensor
    logits: Tensor
    probs: Tensor
    slots: int | None = None
    mask: Tensor | None = None

    def __init__(self, active: Tensor, gate: Tensor, logits: Tensor, probs: Tensor, slots: int | None = None,
                 mask: Tensor | None = None, *, capacity: int | None = None):
        if capacity is not None:  # the old keyword for the slot count
            if slots is not None:
                raise TypeError("Routing() got slots= and its old spelling capacity=; pass slots= alone")
            warn_renamed("Routing(capacity=K) (a slot count)", "Routing(slots=K)")
            slots = capacity
        self.active, self.gate, self.logits, self.probs, self.slots, self.mask = active, gate, logits, probs, slots, mask

    @property
    def capacity(self) -> int | None:
        """Deprecated: :attr:`slots`."""
        warn_renamed("Routing.capacity (a slot count)", "Routing.slots")
        return self.slots

    @property
    def num_modules(self) -> int:
        return self.active.shape[0]

    def module_probs(self) -> Tensor:
        """``[M, B, L]`` differentiable probability that each module runs on each token."""
        p = self.probs[..., 1:] if self.probs.shape[-1] == self.num_modules + 1 else self.probs
        return p.permute(2, 0, 1)

    def _real(self) -> Tensor:
        if self.mask is None:
            return torch.ones_like(self.active[0])
        return self.mask

    def ratio(self) -> Tensor:
        """``[M]`` fraction of real tokens each module ran on (no host sync)."""
        real = self._real()
        n = real.sum().clamp(min=1)
        return (self.active & real).sum((1, 2)).float() / n

    def density(self) -> Tensor:
        """``[M]`` differentiable expected activation ratio over real tokens."""
        real = self._real().float()
        return (self.module_probs() * real).sum((1, 2)) / real.sum().clamp(min=1)

    def density_loss(self, target: float | Tensor, straight_through: bool = False) -> Tensor:
        """Squared distance of the activation ratio to ``target`` (a compute budget).

        Args:
            target (float or Tensor): wanted fraction of tokens per module, scalar or ``[M]``.
            straight_through (bool): measure the *realised* ratio (:meth:`ratio`, the argmax
                decision) with the gradient of the expected one (:meth:`density`). Without it
                the loss reads the expected ratio, which a router can meet with no token
                active (mean probability 0.25, every token below its argmax). Default: ``False``.

        Returns:
            Tensor: scalar, ``sum_m (ratio_m - target_m) ** 2``.
        """
        target = torch.as_tensor(target, dtype=torch.float32, device=self.probs.device)
        density = self.density()
        if straight_through:
            density = self.ratio() + density - density.detach()
        return ((density - target) ** 2).sum()

    def z_loss(self) -> Tensor:
        """Router z-loss: mean over real tokens of ``logsumexp(logits) ** 2`` (keeps logits small).

        Returns:
            Tensor: scalar, differentiable in ``logits``.
        """
        real = self._real().float()
        z = torch.logsumexp(self.logits.float(), -1).square()  # [B, L]
        z = torch.where(real > 0, z, 0.0)  # padding may carry any value, NaN included
        return z.sum() / real.sum().clamp(min=1)


def density_loss(routing: Routing, target: float | Tensor, straight_through: bool = False) -> Tensor:
    """Functional form of :meth:`Routing.density_loss`."""
    return routing.density_loss(target, straight_through)


def check_route_input(x: Tensor, mask: Tensor | None, dim: int, name: str = "x") -> None:
    """Raise a clear error unless ``x [B, L, dim]`` (floating) and ``mask [B, L]`` (bool) fit."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a Tensor of shape [B, L, {dim}], got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape [B, L, {dim}], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    if mask is not None:
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a bool Tensor of shape [B, L], got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor of shape [B, L] (True = real token), got dtype {mask.dtype}")
        if tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"mask must have shape [B, L] = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")


@contextmanager
def fp32_math(device: torch.device):
    """Disable autocast so router math runs in float32."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def project_fp32(x: Tensor, proj: torch.nn.Linear) -> Tensor:
    """``proj(x)`` computed in float32 whatever the autocast state or input dtype."""
    with fp32_math(x.device):
        bias = None if proj.bias is None else proj.bias.float()
        return torch.nn.functional.linear(x.float(), proj.weight.float(), bias)
