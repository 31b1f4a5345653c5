"""Observing routing: one :class:`RoutingStats` per routed unit, one collector for a model.

A *routing unit* is a module that holds the :class:`RoutingStats` of its last forward: a
:class:`~smakit.SparseModularActivation` (in ``.stats``), or any layer with a
``routing_stats`` attribute or property (``SeqBoatLayer``, ``TransformerLayer``, your own).
Fixed-pattern layers (attention on every token, or none) report ``routed=False`` with ratio
1 (or 0), so every layer is read the same way. :func:`collect_routing_stats` walks a model
and gathers them by module path; :func:`summarize_routing` turns that into floats.

Auxiliary losses follow a protocol too: a module that adds a training loss keeps it in an
``aux_loss`` tensor attribute set by its forward (``SparseModularActivation``,
``TopKRouter``); :func:`collect_aux_losses` gathers what one forward set.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

COMPILED_PREFIX = "_orig_mod."  # what torch.compile's wrapper puts before every module path


@dataclass
class RoutingStats:
    """Routing statistics of the last forward; tensors, so reading them costs no host sync.

    Attributes:
        names (list[str]): module names, in routing order.
        ratio (Tensor): ``[M]`` fraction of real tokens each module ran on.
        counts (Tensor): ``[M, B]`` tokens each module ran on, per row.
        active (Tensor): ``[M, B, L]`` bool, True where the module ran on the token (routed
            and, with ``compaction_capacity``, not dropped for lack of a slot).
        gate (Tensor): ``[M, B, L]`` gate values (detached).
        target (Tensor or None): ``[M]`` density target, ``None`` in free mode.
        bias (Tensor or None): ``[M]`` the budget controller's bias on each module's score
            (``density_mode="controller"``), else ``None``.
        span (Tensor or None): ``[M]`` mean over the real tokens a module ran on of the
            original-position span its attention covered (``max - min + 1`` of the keys'
            positions); NaN for a module that reports none, ``None`` when no module does. A
            routed module reports it by setting a 0-dim ``span`` tensor in its forward, as
            :class:`~smakit.modules.LocalGatedAttention` does.
        agreement (Tensor or None): ``[M]`` how often a top-k router's causal predictor
            agreed with the exact top-k choice (eval mode), else ``None``.
        routed (bool): ``False`` for a fixed pattern (a layer that runs its module on every
            real token, or on none): no router decided. Default: ``True``.

    Examples::

        >>> layer = sma(nn.Linear(8, 8), dim=8, router="topk", capacity=0.5)
        >>> y = layer(torch.randn(2, 6, 8))
        >>> layer.stats.ratio, layer.stats.counts
        (tensor([0.5000]), tensor([[3, 3]]))
        >>> RoutingStats.fixed(torch.ones(2, 6, dtype=torch.bool)).ratio
        tensor([1.])
    """

    names: list[str]
    ratio: Tensor
    counts: Tensor
    active: Tensor
    gate: Tensor
    target: Tensor | None = None
    bias: Tensor | None = None
    span: Tensor | None = None
    agreement: Tensor | None = None
    routed: bool = True

    def as_dict(self) -> dict[str, float]:
        """``{name: ratio}`` as Python floats (this one syncs)."""
        return dict(zip(self.names, self.ratio.tolist()))

    @classmethod
    def fixed(cls, mask: Tensor, *, ran: bool = True, span: Tensor | None = None,
              names: tuple[str, ...] = ("0",)) -> RoutingStats:
        """Statistics of a fixed pattern: the module(s) ran on every real token (or on none).

        Args:
            mask (Tensor): ``[B, L]`` bool, True = real token.
            ran (bool): the modules ran on the real tokens (ratio 1) or on none (ratio 0).
                Default: ``True``.
            span (Tensor, optional): 0-dim or ``[M]`` mean span of the attention.
            names (tuple[str]): module names. Default: ``("0",)``.
        """
        if not isinstance(mask, Tensor) or mask.dim() != 2 or mask.dtype != torch.bool:
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"mask must be a [B, L] bool tensor, got {got}")
        M = len(names)
        active = (mask if ran else torch.zeros_like(mask)).expand(M, *mask.shape)  # a view: no copy
        counts = active.sum(-1)
        ratio = counts.sum(-1).float() / mask.sum().clamp(min=1)
        if span is not None:
            span = span.detach().float().reshape(-1).expand(M)
        return cls(list(names), ratio, counts, active, active.float(), span=span, routed=False)


def module_spans(modules) -> Tensor | None:
    """``[M]`` the ``span`` each module set in its last forward (NaN where it has none), or
    ``None`` when no module reports one."""
    spans = [getattr(m, "span", None) for m in modules]
    spans = [s if isinstance(s, Tensor) else None for s in spans]
    known = [s for s in spans if s is not None]
    if not known:
        return None
    nan = torch.full((), math.nan, device=known[0].device)
    return torch.stack([nan if s is None else s.detach().float().reshape(()) for s in spans])


def unit_stats(module: nn.Module) -> RoutingStats | None:
    """The :class:`RoutingStats` a module holds (``routing_stats``, else ``stats``), or ``None``."""
    attrs = vars(module)
    for attr in ("routing_stats", "stats"):
        # the instance dict or a class property: a plain getattr on a module without the
        # attribute goes through nn.Module.__getattr__ and an exception, slow in a walk
        if attr in attrs:
            value = attrs[attr]
        elif isinstance(getattr(type(module), attr, None), property):
            value = getattr(module, attr)
        else:
            continue
        if isinstance(value, RoutingStats):
            return value
    return None


def _paths(model: nn.Module):
    for name, module in model.named_modules():
        yield name.removeprefix(COMPILED_PREFIX) if name != COMPILED_PREFIX[:-1] else "", module


def collect_routing_stats(model: nn.Module, routed_only: bool = False) -> dict[str, RoutingStats]:
    """The :class:`RoutingStats` of every routing unit in ``model``, by module path, in model order.

    A unit is a :class:`~smakit.SparseModularActivation` or a layer with a ``routing_stats``
    attribute (``SeqBoatLayer``, ``TransformerLayer``, ...). A layer that reports the stats
    of the ``sma`` inside it is listed once, under the layer's path. Units that have not run
    yet are left out. Nothing is copied or synced.

    Args:
        model (nn.Module): any model (also compiled: the ``_orig_mod.`` prefix is dropped).
        routed_only (bool): leave out fixed-pattern layers (``routed=False``). Default: ``False``.

    Examples::

        >>> from smakit import SeqBoat
        >>> model = SeqBoat(vocab_size=20, dim=16, depth=2, n_classes=2, window=4, qk_dim=8)
        >>> logits = model(torch.randint(0, 20, (2, 12)))
        >>> stats = collect_routing_stats(model)
        >>> list(stats)
        ['layers.0', 'layers.1']
        >>> stats["layers.0"].active.shape          # [M, B, L]
        torch.Size([1, 2, 12])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    out, seen = {}, set()
    for path, module in _paths(model):
        stats = unit_stats(module)
        if stats is None or id(stats) in seen or (routed_only and not stats.routed):
            continue
        seen.add(id(stats))
        out[path] = stats
    return out


def summarize_routing(stats: dict[str, RoutingStats]) -> dict[str, list]:
    """Floats per unit for logs and JSON (one host sync): ``ratio`` (summed over modules),
    ``span`` (mean over the modules that report one; ``None`` where none does),
    ``per_module`` (``{name: ratio}``) and, when a router reports one, ``agreement``.

    Examples::

        >>> layer = sma(nn.Linear(8, 8), dim=8, router="topk", capacity=0.5)
        >>> y = layer(torch.randn(2, 6, 8))
        >>> summarize_routing({"": layer.stats})
        {'ratio': [0.5], 'span': [None], 'per_module': [{'0': 0.5}]}
    """
    units = list(stats.values())
    if not units:
        return {"ratio": [], "span": [], "per_module": []}
    device = units[0].ratio.device

    def row(t: Tensor | None, m: int) -> Tensor:
        return torch.full((m,), math.nan, device=device) if t is None else t.detach().float().to(device).reshape(m)

    table = torch.cat([torch.stack([row(s.ratio, len(s.names)), row(s.span, len(s.names)),
                                    row(s.agreement, len(s.names))]) for s in units], dim=1)
    ratio, span, agreement = table.tolist()  # the one sync
    out = {"ratio": [], "span": [], "per_module": [], "agreement": []}
    start = 0
    for s in units:
        cut = slice(start, start + len(s.names))
        start = cut.stop
        out["ratio"].append(sum(ratio[cut]))
        out["span"].append(_nanmean(span[cut]))
        out["per_module"].append(dict(zip(s.names, ratio[cut])))
        out["agreement"].append(_nanmean(agreement[cut]))
    if all(s.agreement is None for s in units):
        del out["agreement"]
    return out


def _nanmean(xs: list[float]) -> float | None:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else None


class AuxLosses:
    """The auxiliary losses the modules of a model set during one :func:`collect_aux_losses` block.

    Attributes:
        losses (dict[str, Tensor]): by module path, the ``aux_loss`` each module set (live
            inside the block, frozen when it exits).
    """

    def __init__(self, holders: list[tuple[str, nn.Module]]):
        self._holders = holders
        self._frozen: dict[str, Tensor] | None = None

    @property
    def losses(self) -> dict[str, Tensor]:
        if self._frozen is not None:
            return dict(self._frozen)
        return {p: m.aux_loss for p, m in self._holders if isinstance(m.aux_loss, Tensor)}

    @property
    def total(self) -> Tensor:
        """Their sum, a scalar tensor (0 when no module set one), so ``loss + aux.total`` always works."""
        losses = list(self.losses.values())
        return torch.stack([t.reshape(()) for t in losses]).sum() if losses else torch.zeros(())

    def __repr__(self) -> str:
        return f"AuxLosses({sorted(self.losses)})"


@contextmanager
def collect_aux_losses(model: nn.Module) -> Iterator[AuxLosses]:
    """Context manager: the auxiliary losses set by the forward(s) run inside it.

    On entry every module of ``model`` holding an ``aux_loss`` attribute (each
    :class:`~smakit.SparseModularActivation` and :class:`~smakit.routing.TopKRouter`) is reset
    to ``None``, so a loss from an earlier forward, or from a layer this forward skipped,
    is never counted; on exit the losses are frozen. Unlike a ``return_aux`` argument it
    needs no change to the model's forward, so it works for Hugging Face models,
    ``nn.Transformer`` stacks and compiled models alike (the loss attributes are set by the
    compiled forward as by the eager one). A module called several times in one forward
    counts its last call.

    Args:
        model (nn.Module): the model (or a ``torch.compile`` of it).

    Yields:
        AuxLosses: ``.total`` (a scalar tensor) and ``.losses`` (by module path).

    Examples::

        >>> layer = sma(nn.Linear(8, 8), dim=8, density_target=0.25, density_mode="loss")
        >>> with collect_aux_losses(layer) as aux:
        ...     y = layer(torch.randn(2, 6, 8))
        >>> loss = y.square().mean() + aux.total
        >>> list(aux.losses), aux.total.shape
        ([''], torch.Size([]))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    holders = [(p, m) for p, m in _paths(model) if "aux_loss" in vars(m)]
    for _, module in holders:
        module.aux_loss = None
    aux = AuxLosses(holders)
    try:
        yield aux
    finally:
        aux._frozen = aux.losses
