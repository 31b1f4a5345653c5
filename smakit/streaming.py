"""Streaming through :class:`~smakit.SparseModularActivation`: one token at a time, or a prompt at once.

The decoding protocol of a wrapped module. A *pointwise* module (an MLP, a linear map) needs
nothing: at each step it is called on the new token alone. A module that carries context
from token to token (attention, a convolution, a recurrence) streams when it defines

* ``init_cache(batch_size, device=None, dtype=None) -> cache``: the empty cache (any nest
  of tensors);
* ``step(x, position, cache, update) -> (y, cache)``: ``x [B, D]`` the new token,
  ``position [B]`` int64 its original position in the sequence, ``update [B]`` bool True
  where the token got a slot (it was routed, and the slot budget had room). Rows where
  ``update`` is False must return their cache unchanged; their output is discarded;

and, optionally, for a parallel prefill,

* ``prefill_cache(x, mask, positions) -> cache``: the cache after the compacted tokens
  ``x [B, K, D]`` (``mask [B, K]``, ``positions [B, K]`` as in the forward). Without it
  :func:`sma_prefill` steps the module through its routed tokens one by one.

The router must be causal (each token decides alone): :class:`~smakit.ThresholdRouter`, or
:class:`~smakit.TopKRouter` with ``causal_predictor=True`` in eval mode. The slot budget
(``compaction_slots``, or ``eval_slots`` in eval mode) is counted per row across steps, so a
token past the budget is dropped exactly as in the forward. A budget given as a capacity (a
fraction of the whole length) cannot be honoured token by token: ``step`` refuses it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops.compaction import _compress
from .ops.compaction.layout import _compact_like
from .routing.base import check_route_input

__all__ = ["check_left_padded", "ema_final_state", "sma_init_state", "sma_prefill", "sma_step"]


def _streams(module: nn.Module) -> bool:
    """True when ``module`` implements the cache protocol (``init_cache`` and ``step``)."""
    return callable(getattr(module, "init_cache", None)) and callable(getattr(module, "step", None))


def check_left_padded(mask, shape: tuple[int, int]) -> None:
    """Raise a one-line error unless ``mask`` is a bool ``[B, L]`` (= ``shape``) of left padding.

    Left padding: each row's real tokens (True) come last, with no hole among them, so the row
    reads as its real tokens alone (an all-padding row is an empty prompt). Reads the mask on
    the host: once per prompt, in prefill.
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = f"dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a bool Tensor [B, L] (True = real token), got {got}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask must have shape [B, L] = {tuple(shape)}, got {tuple(mask.shape)}")
    if bool((mask[:, :-1] & ~mask[:, 1:]).any()):
        raise ValueError("mask must be left padding (in each row the real tokens, True, come last with no hole "
                         "among them); pad prompts of different lengths on the left")


def _check_causal(layer) -> None:
    router = layer.router
    if not getattr(router, "causal", True):
        raise RuntimeError(
            f"{type(router).__name__} is not causal here (its choice depends on later tokens), so it cannot "
            "stream; use router='threshold', or TopKRouter(causal_predictor=True) in eval mode")


def _check_output(name: str, y: Tensor) -> None:
    if not isinstance(y, Tensor) or not y.is_floating_point():
        what = y.dtype if isinstance(y, Tensor) else type(y).__name__
        raise TypeError(f"module {name!r} must return a floating tensor (outputs are scaled by the gate), got {what}")


def sma_init_state(layer, batch_size: int, device=None, dtype=None) -> dict:
    """Empty decoding state of ``layer`` for ``batch_size`` rows (see :meth:`SparseModularActivation.init_state`)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch_size must be a non-negative int, got {batch_size!r}")
    param = next(layer.parameters(), None)
    device = device if device is not None else (param.device if param is not None else None)
    M = len(layer.routed_modules)
    caches = {name: m.init_cache(batch_size, device=device, dtype=dtype) if _streams(m) else None
              for name, m in layer.routed_modules.items()}
    return {"pos": torch.zeros(batch_size, dtype=torch.long, device=device),
            "used": torch.zeros(M, batch_size, dtype=torch.long, device=device),
            "cache": caches}


def _check_step_inputs(layer, x: Tensor, state: dict, route_on: Tensor | None) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[-1] != layer.dim:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must have shape [B, {layer.dim}] (one token per row), got {shape}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor, got dtype {x.dtype}")
    if not isinstance(state, dict) or not {"pos", "used", "cache"} <= set(state):
        raise TypeError("state must be the dict returned by init_state(), prefill() or a previous step()")
    if state["pos"].shape[0] != x.shape[0]:
        raise ValueError(f"state was made for batch size {state['pos'].shape[0]}, got x with batch size {x.shape[0]}")
    if route_on is not None and (not isinstance(route_on, Tensor) or route_on.dim() != 2
                                 or route_on.shape[0] != x.shape[0]):
        shape = tuple(route_on.shape) if isinstance(route_on, Tensor) else type(route_on).__name__
        raise ValueError(f"route_on must have shape [B, D_r] with B = {x.shape[0]}, got {shape}")
    if layer._router_validates:  # the router skips its own check
        r, dim = (x if route_on is None else route_on), layer.router.dim
        if r.shape[-1] != dim:
            raise ValueError(f"route_on must have shape [B, {dim}], got {tuple(r.shape)}")
        if not r.is_floating_point():
            raise TypeError(f"route_on must be a floating tensor, got dtype {r.dtype}")


def sma_step(layer, x: Tensor, state: dict, route_on: Tensor | None = None, **extra: Tensor) -> tuple[Tensor, dict]:
    """One token through ``layer`` (see :meth:`SparseModularActivation.step`)."""
    _check_step_inputs(layer, x, state, route_on)
    _check_causal(layer)
    routing = layer._route((x if route_on is None else route_on).unsqueeze(1))
    active, gate = routing.active[:, :, 0], routing.gate[:, :, 0]  # [M, B]
    slots = layer._slot_budget(None)
    if routing.slots is None and slots is not None:
        active = active & (state["used"] < slots)  # the forward drops these too
    pos, out, caches = state["pos"], None, {}
    for m, (name, module) in enumerate(layer.routed_modules.items()):
        if _streams(module):
            y, caches[name] = module.step(x, pos, state["cache"][name], update=active[m], **extra)
        else:
            caches[name] = None
            y = _pointwise(layer, name, module, x, active[m], pos, extra)
        _check_output(name, y)
        y = torch.where(active[m].unsqueeze(-1), y * gate[m].to(y.dtype).unsqueeze(-1), 0.0)
        out = y if out is None else out + y
    return out, {"pos": pos + 1, "used": state["used"] + active.long(), "cache": caches}


def _pointwise(layer, name: str, module: nn.Module, x: Tensor, active: Tensor, pos: Tensor, extra: dict) -> Tensor:
    """A module without the cache protocol, called on the new token alone."""
    declared = layer._declared[name]
    if "positions" in declared:
        raise TypeError(f"module {name!r} reads positions (a sequence module) but has no init_cache()/step(); "
                        "implement the decoding protocol of smakit.streaming to stream it")
    if layer.layout == "flat":
        return module(x, **extra)
    kwargs = {k: t.unsqueeze(1) for k, t in extra.items()}
    if "mask" in declared:
        kwargs["mask"] = active.unsqueeze(1)
    return module(x.unsqueeze(1), **kwargs).squeeze(1)


def sma_prefill(layer, x: Tensor, route_on: Tensor | None = None, mask: Tensor | None = None,
                **extra: Tensor) -> tuple[Tensor, dict]:
    """The parallel forward over a prompt and the state after it (see :meth:`SparseModularActivation.prefill`)."""
    _check_causal(layer)
    if mask is not None:
        _check_prefill_mask(layer, x, mask)
    y = layer(x, mask=mask, route_on=route_on, **extra)
    B, L = x.shape[:2]
    state = sma_init_state(layer, B, device=x.device)
    if L == 0:
        return y, state
    ran = layer.stats.active  # [M, B, L]: routed and given a slot (never padding)
    for m, (name, module) in enumerate(layer.routed_modules.items()):
        if not _streams(module):
            continue
        packed = _compress(x, ran[m], None, "padded", layer.backend)
        if callable(getattr(module, "prefill_cache", None)) and not extra:
            state["cache"][name] = module.prefill_cache(packed.values, packed.mask, packed.positions)
            continue
        cache = state["cache"][name]
        more = {k: _compact_like(t, packed, layer.backend) for k, t in extra.items()}
        for j in range(packed.values.shape[1]):  # fallback: step through the routed tokens
            _, cache = module.step(packed.values[:, j], packed.positions[:, j].clamp(min=0), cache,
                                   update=packed.mask[:, j], **{k: t[:, j] for k, t in more.items()})
        state["cache"][name] = cache
    # with left padding the positions count the padding too: an offset shared by the row's
    # cached and later tokens, which position differences (relative bias, rotary) do not see
    state["pos"] = torch.full((B,), L, dtype=torch.long, device=x.device)
    state["used"] = ran.sum(-1)
    return y, state


def _check_prefill_mask(layer, x: Tensor, mask: Tensor) -> None:
    check_route_input(x, mask, layer.dim, "x")
    check_left_padded(mask, x.shape[:2])
    refuse_capacity_with_padding(layer)


def refuse_capacity_with_padding(layer) -> None:
    """One-line error when ``layer`` (an ``sma`` layer) has a capacity budget: ``ceil(c * L)``
    slots of the padded length, not of each left-padded row's own."""
    try:
        layer._slot_budget(None)
    except ValueError:
        raise ValueError("mask cannot be used with a slot budget given as a capacity (a fraction of the padded "
                         "length, not of each row's own); give it as compaction_slots / eval_slots") from None


def ema_final_state(ema: nn.Module, x: Tensor) -> Tensor:
    """State ``[B, D, N]`` of a causal :class:`~smakit.MultiHeadEMA` after reading ``x [B, L, D]``.

    ``h_L = sum_t q^(L-1-t) b x_t``, in blocks of ``C ~ sqrt(L)`` tokens:
    ``h_L = sum_k q^(C(K-1-k)) sum_c q^(C-1-c) b x_{kC+c}``, so only ``D N (C + K)`` powers are
    computed; equals stepping through ``x`` with :meth:`MultiHeadEMA.step`.
    """
    if ema.bidirectional:
        raise RuntimeError("a bidirectional EMA has no decoding state")
    B, L, D = x.shape
    b, q = ema._coefficients()  # [D, N]
    dtype = torch.promote_types(x.dtype, b.dtype)
    C = max(math.isqrt(max(L - 1, 0)) + 1, 1)
    K = -(-L // C)
    xs = F.pad(x.to(dtype), (0, 0, K * C - L, 0)).view(B, K, C, D)  # zeros in front change nothing
    log_q = torch.log(q.to(dtype)).unsqueeze(-1)  # [D, N, 1]
    ar = torch.arange(C - 1, -1, -1, device=x.device, dtype=dtype)
    # q^lag below e^-80 adds nothing visible; clamping keeps exp out of slow denormals
    inner = torch.exp((log_q * ar).clamp(min=-80.0)) * b.to(dtype).unsqueeze(-1)  # [D, N, C]
    outer = torch.exp((log_q * (C * torch.arange(K - 1, -1, -1, device=x.device, dtype=dtype))).clamp(min=-80.0))
    per_block = torch.einsum("bkcd,dnc->bdnk", xs, inner)  # [B, D, N, K]
    return (per_block * outer).sum(-1)
