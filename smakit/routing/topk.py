"""Fixed-capacity routing: each module takes the top ``capacity`` fraction of every row."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Routing, check_route_input, fp32_math, project_fp32


def capacity_slots(capacity: float, seq_len: int) -> int:
    """Slots per row for a capacity fraction: ``ceil(capacity * L)``, at least 1."""
    return min(max(math.ceil(capacity * seq_len - 1e-9), 1), max(seq_len, 1))


class TopKRouter(nn.Module):
    """Expert-choice routing with a static per-row budget (Mixture-of-Depths style).

    Each module scores every token and takes exactly ``ceil(capacity * L)`` of each row (fewer
    only when a row has fewer real tokens); the gate is ``sigmoid(score)``. The number of
    slots is known from the shapes alone, so compaction needs no host sync.

    Not causal: whether a token is chosen depends on the scores of later tokens in its row.
    Use it for encoders, or for decoders only with a causal approximation at inference
    (e.g. a threshold on the score); :class:`ThresholdRouter` is causal by construction.

    A token whose score is not finite (NaN or inf in the router input) is never routed and its
    gate is 0; its row may then route fewer than ``capacity`` tokens. No error is raised, since
    checking would cost a host sync every step.

    Args:
        dim (int): feature size of the tensor the router reads.
        num_modules (int): number of modules, each choosing its own tokens. Default: 1.
        capacity (float): fraction of each row in ``(0, 1]`` every module runs on.
            Default: 0.25.
        bias (bool): bias in the projection. Default: ``True``.

    Shape:
        - x: ``[B, L, dim]``, mask: ``[B, L]`` bool (True = real token)
        - output: :class:`Routing` with ``active``/``gate`` ``[M, B, L]`` and
          ``capacity = ceil(capacity * L)``

    Examples::

        >>> router = TopKRouter(16, capacity=0.25)
        >>> router(torch.randn(2, 8, 16)).active.sum(-1)
        tensor([[2, 2]])
    """

    def __init__(self, dim: int, num_modules: int = 1, capacity: float = 0.25, bias: bool = True):
        super().__init__()
        if isinstance(capacity, bool) or not isinstance(capacity, (int, float)) or not 0 < capacity <= 1:
            raise ValueError(f"capacity must be a fraction in (0, 1], got {capacity!r}")
        if num_modules < 1:
            raise ValueError(f"num_modules must be >= 1, got {num_modules}")
        self.dim, self.num_modules, self.capacity = dim, num_modules, float(capacity)
        self.proj = nn.Linear(dim, num_modules, bias=bias)

    def reset_parameters(self) -> None:
        self.proj.reset_parameters()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Routing:
        check_route_input(x, mask, self.dim, "route_on")
        B, L = x.shape[:2]
        k = capacity_slots(self.capacity, L)
        logits = project_fp32(x, self.proj)  # [B, L, M]
        with fp32_math(x.device):
            scores = logits.permute(2, 0, 1)  # [M, B, L]
            routable = scores.isfinite()  # NaN/inf router input: never route (no host sync)
            if mask is not None:
                routable &= mask
            scores = scores.masked_fill(~routable, float("-inf"))
            active = torch.zeros(scores.shape, dtype=torch.bool, device=x.device)
            if L > 0:
                active.scatter_(-1, scores.topk(k, dim=-1).indices, True)
            active &= routable
            probs = logits.sigmoid()
            gate = torch.where(active, probs.permute(2, 0, 1), 0.0)
        return Routing(active, gate, logits, probs, k, mask)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_modules={self.num_modules}, capacity={self.capacity}"
