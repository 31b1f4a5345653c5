"""``SparseModularActivation``: route -> compress -> module -> extract.

The protocol a wrapped module sees: it is called as ``module(values, **kwargs)`` with
``values [B, K, D]`` (padded layout) or ``[N, D]`` (flat layout). When its ``forward``
declares a parameter named

* ``mask``: it receives the compacted padding mask ``[B, K]`` (True = real slot),
* ``positions``: it receives the original index of each slot ``[B, K]`` (``-1`` on padding),

and any extra ``[B, L, *]`` tensors given to :meth:`SparseModularActivation.forward` arrive
compacted under their own names. A module that declares none of these simply gets ``values``.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from ._deprecation import warn_renamed
from .ops import Compacted, extract
from .ops.compaction import _compress
from .ops.compaction.layout import _compact_like
from .routing import Routing, ThresholdRouter, TopKRouter, capacity_slots
from .routing.base import check_route_input
from .routing.budget import check_density_target
from .routing.stats import RoutingStats, module_spans
from .streaming import _check_output, sma_init_state, sma_prefill, sma_step

DENSITY_MODES = ("controller", "straight_through", "loss")

PROTOCOL_KWARGS = ("mask", "positions")


def _declared(module: nn.Module) -> frozenset[str]:
    """Names of the protocol keywords that ``module.forward`` declares."""
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(n for n in params if n in PROTOCOL_KWARGS)


def _slot_budget_options(slots, capacity, kind: str) -> tuple[int | None, float | None]:
    """``({kind}_slots, {kind}_capacity)`` checked; an int capacity is the old spelling of slots."""
    s_name, c_name = f"{kind}_slots", f"{kind}_capacity"
    if isinstance(capacity, int) and not isinstance(capacity, bool) and capacity >= 1:
        if slots is not None:
            raise ValueError(f"give {s_name} alone, not also an int {c_name} (its old spelling)")
        warn_renamed(f"an int {c_name} (a slot count)", f"{s_name}", stacklevel=4)
        slots, capacity = capacity, None
    if slots is not None and (isinstance(slots, bool) or not isinstance(slots, int) or slots < 1):
        raise ValueError(f"{s_name} must be a positive int (slots per row), got {slots!r}")
    if capacity is not None and (not isinstance(capacity, float) or not 0 < capacity <= 1):
        raise ValueError(f"{c_name} must be a fraction of the row in (0, 1], got {capacity!r}")
    if slots is not None and capacity is not None:
        raise ValueError(f"give {s_name} (slots per row) or {c_name} (a fraction of the row), not both")
    return slots, capacity


def _budget_attribute(kind: str, unit: str) -> property:
    """``{kind}_{unit}`` as a checked attribute: setting it after construction keeps one meaning
    per name (an int ``*_capacity`` becomes ``*_slots``) and replaces the other spelling's value."""
    own = f"_{kind}_{unit}"

    def get(self):
        return self.__dict__.get(own)

    def set_(self, value):
        slots, capacity = _slot_budget_options(value if unit == "slots" else None,
                                               value if unit == "capacity" else None, kind)
        self.__dict__[f"_{kind}_slots"], self.__dict__[f"_{kind}_capacity"] = slots, capacity

    doc = "slots per row (int)" if unit == "slots" else "a fraction of the row in (0, 1]"
    return property(get, set_, doc=f"The {kind} slot budget as {doc}; ``None`` when unset.")


def _make_router(router, dim: int, num_modules: int, capacity: float | None, router_kwargs: dict,
                 budget: dict) -> nn.Module:
    if isinstance(router, nn.Module):
        if router_kwargs or capacity is not None or budget:
            raise ValueError("router options (density_target with density_mode='controller' included) "
                             "are given to the router instance, not to sma()")
        return router
    if router == "threshold":
        if capacity is not None:
            raise ValueError("capacity applies to router='topk'; for 'threshold' use compaction_slots "
                             "or compaction_capacity")
        return ThresholdRouter(dim, num_modules, **router_kwargs, **budget)
    if budget:
        raise ValueError("density_mode='controller' needs router='threshold' (top-k has a fixed capacity); "
                         "use density_mode='loss' for a density loss on the top-k scores")
    if router == "topk":
        return TopKRouter(dim, num_modules, capacity=0.25 if capacity is None else capacity, **router_kwargs)
    raise ValueError(f"router must be 'threshold', 'topk' or an nn.Module router, got {router!r}")


class SparseModularActivation(nn.Module):
    """Run one or several modules only on the tokens a router chooses for them.

    The router scores each token (from ``x`` or from ``route_on``); the tokens chosen for a
    module are compacted in their original order, the module runs on them alone, and its
    outputs are scattered back multiplied by the router's probability. Skipped tokens get
    exact zeros, so ``x + sma(f)(x)`` is a Mixture-of-Depths-style skip. With several
    modules, one router chooses among them and the outputs are summed.

    A token whose router input is NaN or inf is never routed (its output is exactly zero and
    the module never sees it), so one bad token cannot spread through a sequence module; no
    error is raised, which would cost a host sync every step. ``L = 0`` gives an empty output;
    the padded layout needs ``B >= 1``.

    Args:
        modules (nn.Module or dict[str, nn.Module]): the module(s) to route to. Each maps
            ``[B, K, D]`` (or ``[N, D]`` in the flat layout) to ``[..., D_out]``; all must
            share ``D_out``.
        dim (int): feature size of ``x``.
        router (str or nn.Module): ``"threshold"`` (:class:`ThresholdRouter`, causal),
            ``"topk"`` (:class:`TopKRouter`, static capacity, not causal) or a router module
            returning :class:`Routing`. Default: ``"threshold"``.
        capacity (float, optional): top-k fraction of each row. Default: 0.25 for top-k.
        route_dim (int, optional): feature size of ``route_on`` when it differs from ``dim``.
        layout (str): ``"padded"`` (``[B, K, D]`` with mask and positions, for sequence
            modules) or ``"flat"`` (``[N, D]``, for pointwise modules). Default: ``"padded"``.
        compaction_slots (int, optional): fixed slots per row for the threshold router
            (routed tokens past the row's last slot are dropped), so no host sync is needed.
            Default: ``None``.
        compaction_capacity (float, optional): the same as a fraction of the row in
            ``(0, 1]``: ``ceil(c * L)`` slots. Give at most one of the two. Default: ``None``.
        eval_slots (int, optional): used instead of the ``compaction_*`` budget outside
            training mode: a fixed compute budget at inference. Default: ``None``.
        eval_capacity (float, optional): the same as a fraction of the row. Default: ``None``.
        density_target (float or list[float], optional): wanted fraction of real tokens per
            module (one value, or one per module). Default: ``None`` (free routing).
        density_mode (str): how the target is held. ``"controller"``: a bias on each module's
            score, moved every training forward toward the value that gives the target on the
            batch's realised (argmax) decision (threshold router; see :class:`~smakit.routing.BudgetController`).
            ``"straight_through"``: ``density_weight * routing.density_loss(target,
            straight_through=True)`` in ``aux_loss``. ``"loss"``: the same on the expected
            ratio (mean probability), which the argmax decision does not follow (kept for
            comparison). Default: ``"controller"``.
        density_weight (float): weight of the density loss (loss modes). Default: 1.0.
        density_rate (float): controller step in (0, 1] (controller mode). Default: 0.5.
        z_loss (float): weight of the router z-loss (:meth:`Routing.z_loss`) in ``aux_loss``.
            Default: 0.0 (off).
        backend (str): compaction backend, ``"auto"``, ``"torch"`` or ``"triton"``.
            Default: ``"auto"``.
        **router_kwargs: options of the router (e.g. ``straight_through=True``).

    Attributes:
        router (nn.Module): the router.
        routed_modules (nn.ModuleDict): the routed modules by name (``"0"`` for a single
            module). ``experts`` is its deprecated name; checkpoints with ``experts.*`` keys load.
        stats (RoutingStats or None): statistics of the last forward.
        aux_loss (Tensor or None): the density loss and z-loss of the last forward, if requested.

    Shape:
        - x: ``[B, L, D]``; mask: ``[B, L]`` bool (True = real token); route_on: ``[B, L, D_r]``
        - output: ``[B, L, D_out]``

    Examples::

        >>> mlp = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
        >>> layer = sma(mlp, dim=64, router="topk", capacity=0.25)
        >>> x = torch.randn(2, 16, 64)
        >>> y = x + layer(x)
        >>> layer.stats.ratio
        tensor([0.2500])
    """

    def __init__(
        self,
        modules: nn.Module | dict[str, nn.Module],
        dim: int,
        router: str | nn.Module = "threshold",
        *,
        capacity: float | None = None,
        route_dim: int | None = None,
        layout: str = "padded",
        compaction_slots: int | None = None,
        compaction_capacity: float | None = None,
        eval_slots: int | None = None,
        eval_capacity: float | None = None,
        density_target: float | list[float] | None = None,
        density_mode: str = "controller",
        density_weight: float = 1.0,
        density_rate: float = 0.5,
        z_loss: float = 0.0,
        backend: str = "auto",
        **router_kwargs,
    ):
        super().__init__()
        if isinstance(modules, nn.Module):
            modules = {"0": modules}
        if not isinstance(modules, dict) or not modules or not all(isinstance(m, nn.Module) for m in modules.values()):
            raise TypeError("modules must be an nn.Module or a non-empty dict of nn.Modules")
        if layout not in ("padded", "flat"):
            raise ValueError(f"layout must be 'padded' or 'flat', got {layout!r}")
        compaction_slots, compaction_capacity = _slot_budget_options(
            compaction_slots, compaction_capacity, "compaction")
        eval_slots, eval_capacity = _slot_budget_options(eval_slots, eval_capacity, "eval")
        if density_mode not in DENSITY_MODES:
            raise ValueError(f"density_mode must be one of {DENSITY_MODES}, got {density_mode!r}")
        if isinstance(z_loss, bool) or not isinstance(z_loss, (int, float)) or z_loss < 0:
            raise ValueError(f"z_loss must be a float >= 0 (its weight), got {z_loss!r}")
        targets = None if density_target is None else check_density_target(density_target, len(modules))
        self.dim, self.layout, self.backend = dim, layout, backend
        self.route_dim = dim if route_dim is None else route_dim
        self.__dict__.update(_compaction_slots=compaction_slots, _compaction_capacity=compaction_capacity,
                             _eval_slots=eval_slots, _eval_capacity=eval_capacity)
        self.density_target, self.density_mode, self.density_weight = density_target, density_mode, density_weight
        self.z_loss = float(z_loss)
        budget = {}
        if density_target is not None and density_mode == "controller":
            budget = {"density_target": density_target, "density_rate": density_rate}
        self.routed_modules = nn.ModuleDict(modules)
        self.router = _make_router(router, self.route_dim, len(modules), capacity, router_kwargs, budget)
        self._declared = {name: _declared(m) for name, m in self.routed_modules.items()}
        # the target of a loss-mode budget, made once (the controller holds its own); not saved
        loss_target = None if targets is None or density_mode == "controller" else torch.tensor(targets)
        self.register_buffer("_loss_target", loss_target, persistent=False)
        self.stats: RoutingStats | None = None
        self.aux_loss: Tensor | None = None

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if name == "router":  # also when a user swaps the router after construction
            # smakit's routers skip their input checks when told: forward checks once for both
            self._router_validates = ("validate" in inspect.signature(value.forward).parameters
                                      and isinstance(getattr(value, "dim", None), int))

    compaction_slots = _budget_attribute("compaction", "slots")
    compaction_capacity = _budget_attribute("compaction", "capacity")
    eval_slots = _budget_attribute("eval", "slots")
    eval_capacity = _budget_attribute("eval", "capacity")

    @property
    def module(self) -> nn.Module:
        """The routed module, when there is exactly one."""
        if len(self.routed_modules) != 1:
            raise AttributeError("this SparseModularActivation routes to several modules; use .routed_modules")
        return next(iter(self.routed_modules.values()))

    @property
    def experts(self) -> nn.ModuleDict:
        """Deprecated: :attr:`routed_modules`."""
        warn_renamed("SparseModularActivation.experts", "SparseModularActivation.routed_modules")
        return self.routed_modules

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        old = prefix + "experts."  # checkpoints from before the rename to routed_modules
        for key in [k for k in state_dict if k.startswith(old)]:
            state_dict.setdefault(prefix + "routed_modules." + key[len(old):], state_dict.pop(key))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_inputs(self, x: Tensor, mask: Tensor | None, route_on: Tensor | None, extra: dict) -> None:
        """The one check of a forward's inputs (the router and the compaction do not repeat it)."""
        check_route_input(x, mask, self.dim, "x")
        if route_on is not None and (not isinstance(route_on, Tensor) or route_on.dim() != 3
                                     or tuple(route_on.shape[:2]) != tuple(x.shape[:2])):
            shape = tuple(route_on.shape) if isinstance(route_on, Tensor) else type(route_on).__name__
            raise ValueError(f"route_on must have shape [B, L, D_r] with [B, L] = {tuple(x.shape[:2])}, got {shape}")
        if self._router_validates and (route_on is not None or self.router.dim != self.dim):
            check_route_input(x if route_on is None else route_on, None, self.router.dim, "route_on")
        for name, t in extra.items():
            if not isinstance(t, Tensor) or t.dim() < 2 or tuple(t.shape[:2]) != tuple(x.shape[:2]):
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"{name} must have shape [B, L, ...] with [B, L] = {tuple(x.shape[:2])}, got {shape}")

    def _route(self, route_on: Tensor, mask: Tensor | None = None) -> Routing:
        """The router on inputs already checked (through ``__call__``, so hooks run)."""
        if self._router_validates:
            return self.router(route_on, mask, validate=False)
        return self.router(route_on, mask)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        route_on: Tensor | None = None,
        return_routing: bool = False,
        **extra: Tensor,
    ) -> Tensor | tuple[Tensor, Routing]:
        """Route, run the module(s) on their tokens, and scatter the gated outputs back.

        Args:
            x (Tensor): ``[B, L, D]`` module input.
            mask (Tensor, optional): ``[B, L]`` bool, True = real token; padding never
                activates.
            route_on (Tensor, optional): ``[B, L, D_r]`` what the router reads (default ``x``).
            return_routing (bool): also return the :class:`Routing`. Default: ``False``.
            **extra (Tensor): further ``[B, L, *]`` inputs, compacted like ``x`` and passed
                to the module under the same names.

        Returns:
            Tensor ``[B, L, D_out]`` (and the :class:`Routing` when ``return_routing``).
        """
        self._check_inputs(x, mask, route_on, extra)
        if not x.is_contiguous() and (route_on is None or route_on is x):
            x = route_on = x.contiguous()  # once here, not once in the router and once in the compaction
        routing = self._route(x if route_on is None else route_on, mask)
        slots = routing.slots if routing.slots is not None else self._slot_budget(x.shape[1])
        out, kept = None, []
        drops = routing.slots is None and slots is not None  # a fixed K may drop routed tokens
        for m, (name, module) in enumerate(self.routed_modules.items()):
            packed = _compress(x, routing.active[m], slots, self.layout, self.backend)
            h = module(packed.values, **self._module_kwargs(name, packed, extra))
            _check_output(name, h)
            y = extract(h, packed, routing.gate[m], backend=self.backend)  # checks h, the module's output
            out = y if out is None else out + y
            if drops:
                kept.append(packed.kept())
        self._record(routing, torch.stack(kept) if drops else routing.active)
        return (out, routing) if return_routing else out

    def _slot_budget(self, seq_len: int | None) -> int | None:
        """Slots per row for the threshold router's compaction (``None``: no cap).

        Outside training the ``eval_*`` budget when one is set, else the ``compaction_*`` one;
        a capacity is ``capacity_slots(c, seq_len)``. Decoding (``seq_len=None``: one token
        at a time, the length unknown) can honour slots only. Forward and :meth:`step` both
        read the budget here.
        """
        use_eval = not self.training and (self.eval_slots is not None or self.eval_capacity is not None)
        slots, capacity = ((self.eval_slots, self.eval_capacity) if use_eval
                           else (self.compaction_slots, self.compaction_capacity))
        if capacity is None:
            return slots
        if seq_len is None:
            kind = "eval" if use_eval else "compaction"
            raise ValueError(f"{kind}_capacity={capacity} is a fraction of the whole length, which step() cannot "
                             f"know token by token; give the budget as {kind}_slots (a slot count)")
        return capacity_slots(capacity, seq_len)

    def _module_kwargs(self, name: str, packed: Compacted, extra: dict) -> dict:
        kwargs = {k: _compact_like(t, packed, self.backend) for k, t in extra.items()}
        declared = self._declared[name]
        if "mask" in declared:
            kwargs["mask"] = packed.mask
        if "positions" in declared:
            kwargs["positions"] = packed.positions
        return kwargs

    def _record(self, routing: Routing, ran: Tensor) -> None:
        """Statistics of the tokens each module ran on (``ran [M, B, L]``: routed and not dropped)."""
        real = ran if routing.mask is None else ran & routing.mask
        n_real = real.shape[-1] * real.shape[-2] if routing.mask is None else routing.mask.sum()
        counts = real.sum(-1)
        ratio = counts.sum(-1).float() / torch.as_tensor(n_real, device=ran.device).clamp(min=1)
        budget = getattr(self.router, "budget", None)
        target = getattr(budget, "target", None)
        if target is None and self._loss_target is not None:
            target = self._loss_target.float()
        bias = None if budget is None else budget.bias.detach().clone()
        self.stats = RoutingStats(list(self.routed_modules.keys()), ratio, counts, ran, routing.gate.detach(), target,
                                  bias, module_spans(self.routed_modules.values()),
                                  getattr(self.router, "agreement", None))
        losses = []
        if self.density_target is not None and self.density_mode != "controller":
            st = self.density_mode == "straight_through"
            losses.append(self.density_weight * routing.density_loss(target, straight_through=st))
        if self.z_loss:
            losses.append(self.z_loss * routing.z_loss())
        self.aux_loss = sum(losses[1:], losses[0]) if losses else None

    # decoding (the protocol a wrapped module follows is in smakit.streaming)
    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        """Empty decoding state: position ``[B]``, slots used ``[M, B]`` and each module's cache.

        A module with ``init_cache``/``step`` (see :mod:`smakit.streaming`) gets its cache
        here; a pointwise module has none.
        """
        return sma_init_state(self, batch_size, device, dtype)

    def step(self, x: Tensor, state: dict, route_on: Tensor | None = None, **extra: Tensor) -> tuple[Tensor, dict]:
        """One token ``x [B, D]`` -> ``(y [B, D_out], state)``, equal to :meth:`forward` at that position.

        The router decides from the token alone (it must be causal); the token counts against
        the slot budget (``compaction_slots``/``eval_slots``) per row as in the forward; each routed module runs its
        ``step`` (or, if pointwise, its forward on the token).

        Examples::

            >>> gau = LocalGatedAttention(16, window=4, qk_dim=8)
            >>> layer = sma(gau, dim=16, compaction_slots=3).eval()
            >>> x = torch.randn(2, 9, 16)
            >>> state = layer.init_state(2)
            >>> ys = []
            >>> for t in range(9):
            ...     y, state = layer.step(x[:, t], state)
            ...     ys.append(y)
            >>> torch.allclose(torch.stack(ys, 1), layer(x), atol=1e-5)
            True
        """
        return sma_step(self, x, state, route_on, **extra)

    def prefill(self, x: Tensor, route_on: Tensor | None = None, *, mask: Tensor | None = None,
                **extra: Tensor) -> tuple[Tensor, dict]:
        """The parallel :meth:`forward` over a prompt ``x [B, L, D]`` and the decoding state after it.

        Args:
            x (Tensor): ``[B, L, D]`` the prompt.
            route_on (Tensor, optional): ``[B, L, D_r]`` what the router reads (default ``x``).
            mask (Tensor, optional): ``[B, L]`` bool, True = real token, and only left padding
                (each row's real tokens last): prompts of different lengths in one batch.
                Padding is never routed, so each row's output at its real tokens and its state
                are those of the row alone; positions count the padding (an offset of the
                whole row, invisible to position differences). A capacity budget (a fraction of
                the padded length) is refused. Default: ``None`` (all real).
            **extra (Tensor): further ``[B, L, *]`` inputs, as in :meth:`forward`.

        Returns:
            ``(y [B, L, D_out], state)``; the state equals stepping through ``x`` with :meth:`step`
            (through each row's real tokens alone, with ``mask``). ``y`` is zero at padding.
        """
        return sma_prefill(self, x, route_on, mask, **extra)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, layout={self.layout!r}, backend={self.backend!r}"


def sma(module: nn.Module | dict[str, nn.Module], dim: int, **options) -> SparseModularActivation:
    """Wrap ``module`` (or a dict of modules) so it runs only on routed tokens.

    Shorthand for :class:`SparseModularActivation` ``(module, dim, **options)``.

    Examples::

        >>> layer = sma(nn.Linear(32, 32), dim=32, layout="flat")
        >>> layer(torch.randn(3, 10, 32)).shape
        torch.Size([3, 10, 32])
    """
    return SparseModularActivation(module, dim, **options)


def aux_losses(model: nn.Module) -> Tensor:
    """Sum of the ``aux_loss`` of every :class:`SparseModularActivation` in ``model`` (last
    forward), and of every :class:`TopKRouter` training a causal predictor.

    A scalar tensor, 0 when no layer has one (free routing, or a budget held by the
    controller), so ``task_loss + aux_losses(model)`` is always valid.
    """
    kinds = (SparseModularActivation, TopKRouter)  # a top-k router's causal predictor has its own loss
    losses = [m.aux_loss for m in model.modules() if isinstance(m, kinds) and m.aux_loss is not None]
    return torch.stack(losses).sum() if losses else torch.zeros(())
