"""SeqBoat's latent configurator: each token picks skip or one module by argmax."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Routing, check_route_input, fp32_math, project_fp32
from .budget import BudgetController


def _first_argmax(t: Tensor) -> Tensor:
    """``t.argmax(0)`` for a few options ``t [O, ...]`` (the first of equal maxima wins), as
    ``O - 1`` comparisons: ``argmax`` over a leading dimension is ~30x slower on CPU. NaN
    entries never win here (``argmax`` would pick them); the router skips those tokens anyway."""
    best, choice = t[0], torch.zeros(t.shape[1:], dtype=torch.long, device=t.device)
    for o in range(1, t.shape[0]):
        better = t[o] > best
        best = torch.where(better, t[o], best)
        choice = choice.masked_fill(better, o)
    return choice


def project_option_major(x: Tensor, proj: nn.Linear) -> Tensor:
    """``proj(x)`` in float32, laid out option-major: ``x [B, L, D]`` -> ``[O, B * L]`` (``W x^T``,
    one product with a long output row)."""
    B, L, D = x.shape
    w, xt = proj.weight.float(), x.float().reshape(B * L, D).t()
    return w @ xt if proj.bias is None else torch.addmm(proj.bias.float().unsqueeze(1), w, xt)


class ThresholdRouter(nn.Module):
    """Per-token choice among ``skip`` and ``num_modules`` modules (SeqBoat's router).

    A linear projection gives ``1 + M`` logits; a softmax with a learned temperature
    ``tau`` (stored as ``log tau``, initialised to ``temperature_scale * sqrt(dim)``) gives
    the option probabilities; the argmax picks the option and the winning probability is
    the gate on the module's output, which is how the task loss trains the router. Each token
    decides from its own features alone, so the router is causal. Router math runs in
    float32 under autocast.

    With ``density_target``, a :class:`BudgetController` adds a non-gradient bias to each
    module's score and, in training mode, moves it after every forward toward the bias that
    makes the realised ratio (the fraction of real tokens the argmax sends to the module,
    summed over DDP ranks) equal the target on that batch. The bias applies in every mode
    (training, eval, decoding); only its update is training-only. It lives in buffers, so
    checkpoints carry it. See the Budget page of the docs for the measurements behind it.

    A token whose logits are not finite (NaN or inf in the router input) is skipped: it is
    never routed and its gate is 0, so the module never sees it. No error is raised, since
    checking would cost a host sync every step; ``probs`` stays NaN there, so a density loss
    (and the task loss, through the residual) shows the problem.

    Args:
        dim (int): feature size of the tensor the router reads.
        num_modules (int): number of modules ``M`` to choose among. Default: 1.
        temperature_scale (float): initial temperature is ``temperature_scale * sqrt(dim)``.
            Default: 1.0.
        straight_through (bool): gate forward value 1 with the probability's gradient
            (straight-through estimator). Default: ``False``.
        gumbel (bool): add Gumbel noise to the logits in training (exploration).
            Default: ``False``.
        bias (bool): bias in the projection. Default: ``True``.
        density_target (float or list[float], optional): wanted fraction of real tokens per
            module (one value for all, or ``M`` values), held by the controller.
            Default: ``None`` (free routing).
        density_rate (float): controller step, the fraction of the way to the batch's exact
            bias, in ``(0, 1]``. Default: 0.5.

    Shape:
        - x: ``[B, L, dim]``, mask: ``[B, L]`` bool (True = real token)
        - output: :class:`Routing` with ``active``/``gate`` ``[M, B, L]``

    Examples::

        >>> router = ThresholdRouter(16)
        >>> routing = router(torch.randn(2, 7, 16))
        >>> routing.active.shape
        torch.Size([1, 2, 7])
    """

    def __init__(
        self,
        dim: int,
        num_modules: int = 1,
        temperature_scale: float = 1.0,
        straight_through: bool = False,
        gumbel: bool = False,
        bias: bool = True,
        density_target: float | list[float] | None = None,
        density_rate: float = 0.5,
    ):
        super().__init__()
        if num_modules < 1:
            raise ValueError(f"num_modules must be >= 1, got {num_modules}")
        if temperature_scale <= 0:
            raise ValueError(f"temperature_scale must be > 0, got {temperature_scale}")
        self.dim, self.num_modules = dim, num_modules
        self.temperature_scale = temperature_scale
        self.straight_through, self.gumbel = straight_through, gumbel
        self.proj = nn.Linear(dim, 1 + num_modules, bias=bias)
        # shape [1], not a 0-d scalar: FSDP2's fully_shard cannot shard 0-d parameters
        self.log_temperature = nn.Parameter(torch.empty(1))
        self.budget = None if density_target is None else BudgetController(num_modules, density_target, density_rate)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.proj.reset_parameters()
        with torch.no_grad():
            self.log_temperature.fill_(math.log(self.temperature_scale * math.sqrt(self.dim)))
        if self.budget is not None:
            self.budget.reset()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "log_temperature"
        if key in state_dict and state_dict[key].dim() == 0:  # checkpoints from before the [1] shape
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.exp()

    def forward(self, x: Tensor, mask: Tensor | None = None, *, validate: bool = True) -> Routing:
        """Route ``x [B, L, dim]``; ``validate=False`` skips the input checks (for a caller,
        such as :class:`~smakit.SparseModularActivation`, that made them already).

        The math runs option-major, ``[1 + M, B, L]``: a softmax or argmax over a last dimension
        of 2 options walks one short row per token (~20x slower on CPU than over a leading
        dimension), and ``W x^T`` is one product with a long output row. The returned
        ``logits``/``probs`` are option-last views of it. :meth:`_forward_ref` is the plain
        option-last reference (the tests compare both, forward and gradients).
        """
        if validate:
            check_route_input(x, mask, self.dim, "route_on")
        B, L, _ = x.shape
        with fp32_math(x.device):
            # the option-last view is the graph node users see (retain_grad works on it); the math
            # below runs on its option-major view of the same memory
            logits = project_option_major(x, self.proj).view(self.proj.out_features, B, L)
            logits = logits.permute(1, 2, 0)  # [B, L, 1 + M]
            scores = logits.permute(2, 0, 1) / self.log_temperature.float().exp()  # [1 + M, B, L]
            if self.budget is not None:  # non-gradient offset of the module scores (skip stays 0)
                scores = torch.cat([scores[:1], scores[1:] + self.budget.bias.view(-1, 1, 1)], 0)
            if self.gumbel and self.training:  # noise drawn option-last, as the reference draws it
                u = torch.rand(B, L, scores.shape[0], dtype=scores.dtype, device=scores.device)
                scores = scores - torch.log(-torch.log(u.clamp_(1e-9, 1 - 1e-9))).permute(2, 0, 1)
            probs = scores.softmax(0).permute(1, 2, 0)  # [B, L, 1 + M], option-major memory
            choice = _first_argmax(probs.permute(2, 0, 1))  # [B, L]
            skip = ~logits.permute(2, 0, 1).isfinite().all(0)  # NaN/inf router input: never route (no host sync)
            if mask is not None:
                skip = skip | ~mask
            choice = choice.masked_fill(skip, 0)
            options = torch.arange(1, self.num_modules + 1, device=x.device)
            active = choice.unsqueeze(0) == options.view(-1, 1, 1)  # [M, B, L]
            p = probs.permute(2, 0, 1)[1:]  # [M, B, L], contiguous
            if self.straight_through:
                p = 1.0 + p - p.detach()
            gate = torch.where(active, p, 0.0)
        if self.budget is not None and self.training:
            self.budget.update(scores.permute(1, 2, 0), mask)
        return Routing(active, gate, logits, probs, None, mask)

    def _forward_ref(self, x: Tensor, mask: Tensor | None = None) -> Routing:
        """Plain option-last reference of :meth:`forward` (same decision, gate and gradients)."""
        logits = project_fp32(x, self.proj)  # [B, L, 1 + M]
        with fp32_math(x.device):
            scores = logits / self.log_temperature.float().exp()
            if self.budget is not None:
                scores = torch.cat([scores[..., :1], scores[..., 1:] + self.budget.bias], -1)
            if self.gumbel and self.training:
                u = torch.rand_like(scores).clamp_(1e-9, 1 - 1e-9)
                scores = scores - torch.log(-torch.log(u))
            probs = scores.softmax(-1)
            choice = probs.argmax(-1)  # [B, L]
            skip = ~logits.isfinite().all(-1)
            if mask is not None:
                skip = skip | ~mask
            choice = choice.masked_fill(skip, 0)
            options = torch.arange(1, self.num_modules + 1, device=x.device)
            active = choice.unsqueeze(0) == options.view(-1, 1, 1)  # [M, B, L]
            p = probs[..., 1:].permute(2, 0, 1)  # [M, B, L]
            if self.straight_through:
                p = 1.0 + p - p.detach()
            gate = torch.where(active, p, 0.0)
        if self.budget is not None and self.training:
            self.budget.update(scores, mask)
        return Routing(active, gate, logits, probs, None, mask)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_modules={self.num_modules}, temperature_scale={self.temperature_scale}, "
                f"straight_through={self.straight_through}, gumbel={self.gumbel}")

    @property
    def density_target(self) -> Tensor | None:
        """``[M]`` target activation ratios, or ``None`` in free mode."""
        return None if self.budget is None else self.budget.target
