"""Fixed-capacity routing: each module takes the top ``capacity`` fraction of every row."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Routing, check_route_input, fp32_math, project_fp32


def capacity_slots(capacity: float, seq_len: int) -> int:
    """Slots per row for a capacity (a fraction of the row): ``ceil(capacity * L)``, at least 1.

    Examples::

        >>> capacity_slots(0.25, 10)
        3
    """
    return min(max(math.ceil(capacity * seq_len - 1e-9), 1), max(seq_len, 1))


class TopKRouter(nn.Module):
    """Expert-choice routing with a static per-row budget (Mixture-of-Depths style).

    Each module scores every token and takes exactly ``ceil(capacity * L)`` of each row (fewer
    only when a row has fewer real tokens); the gate is ``sigmoid(score)``. The number of
    slots is known from the shapes alone, so compaction needs no host sync.

    Not causal: whether a token is chosen depends on the scores of later tokens in its row.
    For decoders, ``causal_predictor=True`` adds a small MLP that guesses the top-k decision
    from the token's own features (read with a stop-gradient, so it never changes the model)
    and is trained by its own binary cross-entropy against the top-k choice, stored in
    ``aux_loss`` (and summed by :func:`smakit.aux_losses`). In training the exact top-k
    routes; in eval mode the predictor does (``logit > 0``), so each token decides alone and
    the router is causal: it streams with :meth:`~smakit.SparseModularActivation.step` and
    a KV-cached ``generate`` routes as the full forward. ``agreement`` reports how often the
    predictor matches top-k.

    A token whose score is not finite (NaN or inf in the router input) is never routed and its
    gate is 0; its row may then route fewer than ``capacity`` tokens. No error is raised, since
    checking would cost a host sync every step.

    Args:
        dim (int): feature size of the tensor the router reads.
        num_modules (int): number of modules, each choosing its own tokens. Default: 1.
        capacity (float): fraction of each row in ``(0, 1]`` every module runs on.
            Default: 0.25.
        bias (bool): bias in the projection. Default: ``True``.
        causal_predictor (bool): train a causal predictor of the decision and route with it in
            eval mode. Default: ``False``.
        predictor_hidden (int, optional): hidden size of the predictor. Default: ``dim``.
        predictor_weight (float): weight of the predictor's loss in ``aux_loss``. Default: 1.0.

    Attributes:
        causal (bool): True when routing is causal now (predictor present and eval mode).
        aux_loss (Tensor or None): the predictor's loss of the last training forward.
        agreement (Tensor or None): ``[M]`` fraction of real tokens where the predictor agrees
            with top-k, from the last forward over more than one token.

    Shape:
        - x: ``[B, L, dim]``, mask: ``[B, L]`` bool (True = real token)
        - output: :class:`Routing` with ``active``/``gate`` ``[M, B, L]`` and
          ``slots = ceil(capacity * L)``

    Examples::

        >>> router = TopKRouter(16, capacity=0.25)
        >>> router(torch.randn(2, 8, 16)).active.sum(-1)
        tensor([[2, 2]])
    """

    def __init__(self, dim: int, num_modules: int = 1, capacity: float = 0.25, bias: bool = True,
                 causal_predictor: bool = False, predictor_hidden: int | None = None, predictor_weight: float = 1.0):
        super().__init__()
        if isinstance(capacity, bool) or not isinstance(capacity, (int, float)) or not 0 < capacity <= 1:
            raise ValueError(f"capacity must be a fraction in (0, 1], got {capacity!r}")
        if num_modules < 1:
            raise ValueError(f"num_modules must be >= 1, got {num_modules}")
        self.dim, self.num_modules, self.capacity = dim, num_modules, float(capacity)
        self.proj = nn.Linear(dim, num_modules, bias=bias)
        self.predictor = None
        if causal_predictor:
            hidden = predictor_hidden or dim
            self.predictor = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, num_modules))
        self.predictor_weight = predictor_weight
        self.aux_loss: Tensor | None = None
        self.agreement: Tensor | None = None

    @property
    def causal(self) -> bool:
        return self.predictor is not None and not self.training

    def reset_parameters(self) -> None:
        self.proj.reset_parameters()
        if self.predictor is not None:
            for m in (self.predictor[0], self.predictor[2]):
                m.reset_parameters()

    def forward(self, x: Tensor, mask: Tensor | None = None, *, validate: bool = True) -> Routing:
        """Route ``x [B, L, dim]``; ``validate=False`` skips the input checks (for a caller,
        such as :class:`~smakit.SparseModularActivation`, that made them already)."""
        if validate:
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
            if self.predictor is not None:
                active, k = self._predicted(x, active, routable, L), (k if self.training else None)
            gate = torch.where(active, probs.permute(2, 0, 1), 0.0)
        return Routing(active, gate, logits, probs, k, mask)

    def _predicted(self, x: Tensor, topk: Tensor, routable: Tensor, L: int) -> Tensor:
        """Train the predictor on the top-k choice (training) or route with its guess (eval)."""
        guess_logits = project_fp32(x.detach(), self.predictor[0])
        guess_logits = project_fp32(self.predictor[1](guess_logits), self.predictor[2]).permute(2, 0, 1)  # [M, B, L]
        guess = (guess_logits > 0) & routable
        real = routable.float()
        if L > 1:  # one token has no meaningful top-k to agree with
            self.agreement = ((guess == topk).float() * real).sum((1, 2)).detach() / real.sum((1, 2)).clamp(min=1)
        if not self.training:
            self.aux_loss = None
            return guess
        bce = F.binary_cross_entropy_with_logits(guess_logits.nan_to_num(0.0), topk.float(), reduction="none")
        self.aux_loss = self.predictor_weight * (bce * real).sum() / real.sum().clamp(min=1)
        return topk

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_modules={self.num_modules}, capacity={self.capacity}, "
                f"causal_predictor={self.predictor is not None}")
