"""SeqBoat: the layer (an EMA state space model that routes tokens to a local gated attention
unit) and the model (a stack of them with an embedding and a head)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import default, exists, zero_padding
from ..modules import CausalConv, LocalGatedAttention, MultiHeadEMA
from ..modules.mlp import check_activation
from ..routing.stats import RoutingStats
from ..sma import sma
from ..streaming import check_left_padded, ema_final_state
from .backbone import SequenceModel
from .transformer import FeedForwardBlock, TransformerLayer

MODES = ("sparse", "always", "none")
VARIANTS = ("seqboat", "seqboat_full", "mega_chunk", "ema_only", "transformer")


class SeqBoatLayer(nn.Module):
    """SeqBoat layer (Ren et al., 2023): EMA state representation, sparsely activated GAU.

    ``h = silu(EMA(norm(x)))`` (with ``short_conv``, ``silu(EMA(xn + conv(xn)))`` for
    ``xn = norm(x)``); a :class:`~smakit.ThresholdRouter` reading ``h`` decides per
    token between *skip* and the attention unit; the chosen tokens are compacted in order and
    a :class:`~smakit.modules.LocalGatedAttention` attends over the last ``window`` *routed*
    tokens (relative positions and rotary by original position); its outputs come back
    multiplied by the router probability. The layer output is
    ``silu(h W_bypass + gated_attention + x)`` (normalised after, with ``prenorm=False``);
    with ``update_gate``, ``x + u * (silu(h W_bypass + gated_attention) - x)`` for the update
    gate ``u = sigmoid(h W_u)`` (Mega's gated residual, Ma et al., 2023).

    ``mode`` gives the ablations from the same parts: ``"sparse"`` (SeqBoat), ``"always"``
    (attention on every token, SeqBoat-full; with ``chunked=True`` Mega-chunk) and
    ``"none"`` (EMA only).

    Args:
        dim (int): model size ``D``.
        causal (bool): causal EMA and attention (decoder); otherwise bidirectional.
        window (int): attention window in routed tokens (chunk size when ``chunked``).
            Default: 128.
        qk_dim (int): shared query/key size. Default: 64.
        value_dim (int, optional): value/gate size of the GAU. Default: ``2 * dim``.
        attention (str): ``"softmax"`` or ``"relu2"``. Default: ``"softmax"``.
        mode (str): ``"sparse"``, ``"always"`` or ``"none"``. Default: ``"sparse"``.
        chunked (bool): fixed-chunk attention instead of a sliding window. Default: ``False``.
        ema_ndim (int): EMA state dimensions per channel. Default: 16.
        truncation (int, optional): EMA kernel truncation. Default: ``None``.
        short_conv (int, optional): kernel size of a depthwise convolution of the
            normalised input, added to it before the EMA (and so seen by the router): it
            gives the EMA the exact last few tokens. Causal (left-padded) in a causal layer,
            centred (odd size) in a bidirectional one; padded tokens are zeroed first.
            Default: ``None`` (no convolution).
        update_gate (bool): mix the new value into the input by a per-token, per-channel
            gate read from ``h`` (above), so every token gets a content-dependent update
            whether or not it was routed. Default: ``False`` (the layer of before).
        prenorm (bool): normalise the input (else the output). Default: ``True``.
        dropout (float): dropout on the EMA output and the mixed output. Default: 0.0.
        attn_dropout (float): dropout on attention weights. Default: 0.0.
        rotary (bool): rotary embedding at original positions. Default: ``True``.
        relative_bias (bool or str): learned bias of the original distance: ``"buckets"`` (or
            ``True``) a table read per pair, ``"fourier"`` extra query/key features (per token),
            ``False`` none (see :class:`~smakit.modules.LocalGatedAttention`). Default: ``True``.
        max_distance (int): distance the relative bias resolves. Default: 1024.
        temperature_scale (float): router temperature init, ``scale * sqrt(D)``. Default: 1.0.
        straight_through (bool): straight-through gate in the router. Default: ``False``.
        density_target (float, optional): fraction of real tokens the attention may run on,
            held by ``density_mode`` (see :func:`smakit.sma`). Default: ``None`` (free).
        density_mode (str): ``"controller"``, ``"straight_through"`` or ``"loss"``.
            Default: ``"controller"``.
        density_rate (float): controller step in (0, 1]. Default: 0.5.
        z_loss (float): router z-loss weight (read with :func:`smakit.aux_losses`).
            Default: 0.0.
        compaction_slots (int, optional): fixed attention slots per row (routed tokens past
            the row's last slot skip attention), so routing needs no host sync (CUDA graphs,
            ``fullgraph`` compile). Default: ``None`` (the longest row).
        compaction_capacity (float, optional): the same as a fraction of ``L`` in ``(0, 1]``
            (``ceil(c * L)`` slots; an int here is the old spelling of ``compaction_slots``).
            Default: ``None``.
        eval_slots (int, optional): slots per row outside training mode (a fixed inference
            budget). Default: ``None``.
        eval_capacity (float, optional): the same as a fraction of ``L``. Default: ``None``.

    Attributes:
        conv (CausalConv or None): the ``short_conv`` convolution.
        update (nn.Linear or None): the ``update_gate`` projection ``[D -> D]``.
        attn: ``sma(LocalGatedAttention)`` (sparse), the bare GAU (always) or ``None``.
        gau (LocalGatedAttention or None): the attention unit itself (a view of ``attn``,
            not registered twice; checkpoints with the older ``gau.*`` keys still load).
        routing_stats (RoutingStats or None): the attention's routing in the last forward
            (read by :func:`smakit.routing.collect_routing_stats`).

    Shape:
        - x: ``[B, L, D]``; mask: ``[B, L]`` bool (True = real token)
        - output: ``[B, L, D]``

    Examples::

        >>> layer = SeqBoatLayer(32, causal=True, window=8, qk_dim=16).eval()
        >>> x = torch.randn(2, 20, 32)
        >>> y = layer(x)
        >>> state = layer.init_state(2)
        >>> y0, state = layer.step(x[:, 0], state)
        >>> torch.allclose(y0, y[:, 0], atol=1e-5)
        True
    """

    def __init__(
        self,
        dim: int,
        *,
        causal: bool,
        window: int = 128,
        qk_dim: int = 64,
        value_dim: int | None = None,
        attention: str = "softmax",
        mode: str = "sparse",
        chunked: bool = False,
        ema_ndim: int = 16,
        truncation: int | None = None,
        short_conv: int | None = None,
        update_gate: bool = False,
        prenorm: bool = True,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        rotary: bool = True,
        relative_bias: bool | str = True,
        max_distance: int = 1024,
        temperature_scale: float = 1.0,
        straight_through: bool = False,
        density_target: float | None = None,
        density_mode: str = "controller",
        density_rate: float = 0.5,
        z_loss: float = 0.0,
        compaction_slots: int | None = None,
        compaction_capacity: float | None = None,
        eval_slots: int | None = None,
        eval_capacity: float | None = None,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        _check_short_conv(short_conv, causal)
        if not isinstance(update_gate, bool):
            raise ValueError(f"update_gate must be True or False, got {update_gate!r}")
        self.dim, self.causal, self.mode, self.prenorm = dim, causal, mode, prenorm
        self.norm = nn.LayerNorm(dim)
        self.ema = MultiHeadEMA(dim, ema_ndim, bidirectional=not causal, truncation=truncation)
        self.bypass = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.attn = None  # the one registered attention unit (behind sma when sparse)
        if mode != "none":
            gau = LocalGatedAttention(dim, window, qk_dim, value_dim, causal=causal, attention=attention,
                                      chunked=chunked, rotary=rotary, relative_bias=relative_bias,
                                      max_distance=max_distance, dropout=attn_dropout)
            self.attn = gau if mode == "always" else sma(
                gau, dim, router="threshold", temperature_scale=temperature_scale, straight_through=straight_through,
                density_target=density_target, density_mode=density_mode, density_rate=density_rate, z_loss=z_loss,
                compaction_slots=compaction_slots, compaction_capacity=compaction_capacity, eval_slots=eval_slots,
                eval_capacity=eval_capacity)
        # made last, so the other parameters start as they do without it (same seed, same init)
        self.conv = CausalConv(dim, short_conv, causal=causal) if exists(short_conv) else None
        self.update = nn.Linear(dim, dim) if update_gate else None
        self._real: Tensor | None = None  # [B, L] real tokens of the last forward

    @property
    def gau(self) -> LocalGatedAttention | None:
        """The attention unit (``attn.module`` when sparse)."""
        return self.attn.module if self.mode == "sparse" else self.attn

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints from before one registration held the unit twice: under gau.* and attn.*
        target = prefix + ("attn.routed_modules.0." if self.mode == "sparse" else "attn.")
        for key in [k for k in state_dict if k.startswith(prefix + "gau.")]:
            value = state_dict.pop(key)
            state_dict.setdefault(target + key[len(prefix + "gau."):], value)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def router(self) -> nn.Module | None:
        return self.attn.router if self.mode == "sparse" else None

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.ema.reset_parameters()
        self.bypass.reset_parameters()
        if exists(self.gau):
            self.gau.reset_parameters()
        if exists(self.router):
            self.router.reset_parameters()
        if exists(self.conv):
            self.conv.reset_parameters()
        if exists(self.update):
            self.update.reset_parameters()

    def _state_input(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(u, h = silu(EMA(u)))`` for a sequence ``[B, L, D]``: ``u`` the normed ``x``,
        plus its short convolution with ``short_conv``."""
        xn = self.norm(x) if self.prenorm else x
        if exists(self.conv):
            xn = xn + self.conv(xn, mask)  # the conv zeroes padded tokens first
        return xn, self.drop(F.silu(self.ema(xn, mask)))

    def _finish(self, out: Tensor, residual: Tensor, h: Tensor) -> Tensor:
        """The layer output from the mixed ``out``, the input ``residual`` and the state ``h``."""
        if exists(self.update):
            u = torch.sigmoid(self.update(h))
            out = residual + u * (F.silu(self.drop(out)) - residual)  # not lerp: under autocast the dtypes differ
        else:
            out = F.silu(self.drop(out) + residual)
        return out if self.prenorm else self.norm(out)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        self._real = _real_tokens(x, mask)
        if x.shape[0] == 0 or x.shape[1] == 0:  # nothing to mix (and the FFT cannot take L = 0)
            return self._finish(self.bypass(x), x, x)
        _, h = self._state_input(x, mask)
        out = self.bypass(h)
        if self.mode == "sparse":
            out = out + self.attn(h, mask=mask, route_on=h)
        elif self.mode == "always":
            out = out + self.attn(h, mask=mask)
        return self._finish(out, x, h)

    @property
    def routing_stats(self) -> RoutingStats | None:
        """The attention's :class:`~smakit.routing.RoutingStats` in the last forward (``None`` before one).

        Sparse: the router's statistics (with the attention's ``span``); always: ratio 1 and
        the span; none: ratio 0. The fixed patterns have ``routed=False``.
        """
        real = self._real
        if real is None:
            return None
        ran = real.numel() > 0 and self.mode != "none"
        if ran and self.mode == "sparse":
            return self.attn.stats
        span = self.gau.span if ran and exists(self.gau.span) else torch.zeros((), device=real.device)
        return RoutingStats.fixed(real, ran=ran, span=span)

    def stats(self) -> dict[str, Tensor]:
        """Deprecated: ``{"ratio", "span"}`` (0-dim tensors) of the last forward; read
        :attr:`routing_stats` (``.ratio[0]``, ``.span[0]``) or :func:`smakit.routing.collect_routing_stats`."""
        warnings.warn("SeqBoatLayer.stats() is deprecated, use SeqBoatLayer.routing_stats (a RoutingStats) or "
                      "smakit.routing.collect_routing_stats(model); removed in 0.3", FutureWarning, stacklevel=2)
        stats, zero = self.routing_stats, torch.zeros(())
        if stats is None:
            return {"ratio": zero, "span": zero}
        return {"ratio": stats.ratio[0], "span": zero if stats.span is None else stats.span[0]}

    # decoding
    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        """Decoding state: the EMA state ``[B, D, N]``, the attention's state (``attn``) and,
        with ``short_conv``, the last ``short_conv - 1`` normed inputs (``conv``, ``[B, D, k - 1]``)."""
        if not self.causal:
            raise RuntimeError("step() needs a causal SeqBoatLayer")
        device = default(device, self.bypass.weight.device)
        state = {"ema": self.ema.init_state(batch_size, device, dtype)}
        if exists(self.conv):
            state["conv"] = self.conv.init_state(batch_size, device, dtype)
        if self.mode == "sparse":
            state["attn"] = self.attn.init_state(batch_size, device, dtype)
        elif self.mode == "always":
            state["attn"] = self.attn.init_cache(batch_size, device, dtype)
            state["pos"] = torch.zeros(batch_size, dtype=torch.long, device=device)
        return state

    def step(self, x: Tensor, state: dict) -> tuple[Tensor, dict]:
        """One token ``x [B, D]`` -> ``(y [B, D], state)``; ``O(window)`` time and memory.

        EMA step, bypass, and the attention's own step (through :meth:`SparseModularActivation.step`
        when sparse, so the slot budget is honoured); equals the causal :meth:`forward` at
        that position (in eval mode).
        """
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[-1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape [B, {self.dim}] (one token per row), got {shape}")
        if not isinstance(state, dict) or "ema" not in state or (exists(self.conv) and "conv" not in state):
            raise TypeError("state must be the dict returned by init_state(), prefill() or a previous step()")
        if state["ema"].shape[0] != x.shape[0]:
            raise ValueError(f"state was made for batch size {state['ema'].shape[0]}, got x with batch size {x.shape[0]}")
        xn = self.norm(x) if self.prenorm else x
        new = {}
        if exists(self.conv):
            c, new["conv"] = self.conv.step(xn, state["conv"])
            xn = xn + c
        e, new["ema"] = self.ema.step(xn, state["ema"])
        h = F.silu(e)
        out = self.bypass(h)
        if self.mode == "sparse":
            a, new["attn"] = self.attn.step(h, state["attn"], route_on=h)
            out = out + a
        elif self.mode == "always":
            a, new["attn"] = self.attn.step(h, state["pos"], state["attn"])
            out, new["pos"] = out + a, state["pos"] + 1
        return self._finish(out, x, h), new

    def prefill(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, dict]:
        """The parallel forward over a prompt ``x [B, L, D]`` and the state after it.

        The EMA state comes from the whole sequence at once (:func:`smakit.streaming.ema_final_state`)
        and the attention cache from the last ``window`` routed tokens, at their original
        positions. Equals :meth:`forward` and the state after stepping through ``x``.

        Args:
            x (Tensor): ``[B, L, D]`` the prompt.
            mask (Tensor, optional): ``[B, L]`` bool, True = real token; only left padding
                (each row's real tokens last, checked): a batch of prompts of different
                lengths. Each row's output at its real tokens, and stepping on from its state,
                equal the row's real tokens alone: padding enters neither the EMA nor the
                convolution's state (zeros, as before a fresh row), nor the router, nor the
                attention window. The output at padding is finite and means nothing.
                Default: ``None`` (all real).

        Returns:
            ``(y [B, L, D], state)``.
        """
        B, L = x.shape[:2]
        state = self.init_state(B, x.device)
        if exists(mask):
            check_left_padded(mask, (B, L))
        if B == 0 or L == 0:
            return self.forward(x, mask), state
        self._real = _real_tokens(x, mask)
        u, h = self._state_input(x, mask)
        state["ema"] = ema_final_state(self.ema, zero_padding(u, mask))  # the EMA read u (normed x + its conv)
        if exists(self.conv):  # the conv keeps the last k - 1 normed inputs; the norm is per token
            start = max(L - self.conv.kernel_size + 1, 0)
            tail = self.norm(x[:, start:]) if self.prenorm else x[:, start:]
            state["conv"] = self.conv.final_state(zero_padding(tail, mask[:, start:] if exists(mask) else None))
        out = self.bypass(h)
        if self.mode == "sparse":
            a, state["attn"] = self.attn.prefill(h, route_on=h, mask=mask)
            out = out + a
        elif self.mode == "always":
            a, state["attn"], state["pos"] = self._prefill_always(h, mask)
            out = out + a
        return self._finish(out, x, h), state

    def _prefill_always(self, h: Tensor, mask: Tensor | None) -> tuple[Tensor, dict, Tensor]:
        """``(attention output [B, L, D], cache, next position [B])`` of the always-on attention."""
        B, L = h.shape[:2]
        if not exists(mask):
            return self.attn(h), self.attn.prefill_cache(h), torch.full((B,), L, dtype=torch.long, device=h.device)
        # each row's real tokens moved first (left -> right padding): the slots and positions are then
        # the row's own, so the window, the chunks of mega_chunk and the cache are those of the row alone
        n = mask.sum(1)  # [B] real tokens per row
        ar = torch.arange(L, device=h.device)
        pad = (L - n).unsqueeze(1)  # [B, 1]
        first = h.gather(1, ((ar + pad) % L).unsqueeze(-1).expand_as(h))
        real_first = ar < n.unsqueeze(1)  # [B, L]
        a = self.attn(first, mask=real_first)  # zeros at padding queries
        a = a.gather(1, ((ar - pad) % L).unsqueeze(-1).expand_as(a))
        return a, self.attn.prefill_cache(first, real_first), n

    def extra_repr(self) -> str:
        conv = f", short_conv={self.conv.kernel_size}" if exists(self.conv) else ""
        update = ", update_gate=True" if exists(self.update) else ""
        return f"dim={self.dim}, causal={self.causal}, mode={self.mode!r}, prenorm={self.prenorm}" + conv + update


def _check_short_conv(short_conv, causal: bool) -> None:
    if short_conv is None:
        return
    if isinstance(short_conv, bool) or not isinstance(short_conv, int) or short_conv < 1:
        raise ValueError(f"short_conv must be a positive int (a kernel size) or None, got {short_conv!r}")
    if not causal and short_conv % 2 == 0:
        raise ValueError(f"short_conv must be odd in a bidirectional layer (a centred kernel), got {short_conv}")


def _real_tokens(x: Tensor, mask: Tensor | None) -> Tensor:
    """``[B, L]`` bool real tokens: ``mask``, or all (a broadcast view, no copy)."""
    return mask if exists(mask) else torch.ones((), dtype=torch.bool, device=x.device).expand(x.shape[:2])


class SeqBoat(SequenceModel):
    """A stack of SeqBoat layers (or an ablation variant) with an embedding and a head.

    A :class:`~smakit.models.SequenceModel` of :class:`SeqBoatLayer` s. Input is either
    token ids ``[B, L]`` (``vocab_size``) or features ``[B, L, C]`` (``input_dim``). With
    ``n_classes`` the model pools the last hidden states over real tokens into
    ``[B, n_classes]`` logits; with ``lm=True`` it returns ``[B, L, vocab_size]``.

    Variants, all from the same parts: ``"seqboat"`` (routed local attention),
    ``"seqboat_full"`` (attention on every token), ``"mega_chunk"`` (attention within fixed
    chunks of ``chunk`` tokens, no router) and ``"ema_only"``. ``"transformer"`` (full
    attention + MLP per layer, no SeqBoat layer) is deprecated: use
    :class:`~smakit.models.Transformer` (same layers and parameters).

    Args:
        vocab_size (int, optional): token vocabulary (token input and/or LM head).
        input_dim (int, optional): feature size ``C`` for float inputs.
        dim (int): model size. Default: 128.
        depth (int): number of layers. Default: 4.
        n_classes (int, optional): classification head size.
        lm (bool): language-model head over ``vocab_size``. Default: ``False``.
        causal (bool, optional): causal layers. Default: ``lm``.
        variant (str): one of the variants above. Default: ``"seqboat"``.
        window (int): attention window in routed tokens. Default: 128.
        chunk (int, optional): chunk size of ``mega_chunk``. Default: ``window``.
        qk_dim (int): query/key size. Default: 64.
        value_dim (int, optional): GAU value size. Default: ``2 * dim``.
        attention (str): ``"softmax"`` or ``"relu2"``. Default: ``"softmax"``.
        ema_ndim (int): EMA state dimensions. Default: 16.
        ffn_hidden (int, optional): add a residual MLP after each SeqBoat layer. Default: ``None``.
        ffn_activation (str): that MLP's ``"gelu"`` or ``"swiglu"`` (gated: ``1.5x`` the
            parameters at the same ``ffn_hidden``). Default: ``"gelu"``.
        heads (int): heads of the (deprecated) transformer variant. Default: 4.
        pooling (str): ``"mean"``, ``"last"`` or ``"max"`` over real tokens. Default: ``"mean"``.
        dropout (float): dropout. Default: 0.0.
        tie_embeddings (bool): share the LM head with the token embedding. Default: ``False``.
        **layer_kwargs: further :class:`SeqBoatLayer` options (``prenorm``, ``truncation``,
            ``short_conv``, ``update_gate``, ``max_distance``, ``straight_through``, ``density_target``, ...). A list
            ``density_target`` gives one target per routed layer.

    Shape:
        - inputs: ``[B, L]`` int64 or ``[B, L, C]`` float; mask: ``[B, L]`` bool
        - output: ``[B, n_classes]`` or ``[B, L, vocab_size]``

    Examples::

        >>> model = SeqBoat(vocab_size=100, dim=32, depth=2, lm=True, window=8,
        ...                 qk_dim=16)
        >>> model(torch.randint(0, 100, (2, 12))).shape
        torch.Size([2, 12, 100])
        >>> clf = SeqBoat(input_dim=3, dim=32, depth=2, n_classes=5, window=8, qk_dim=16)
        >>> clf(torch.randn(2, 12, 3), mask=torch.ones(2, 12, dtype=torch.bool)).shape
        torch.Size([2, 5])
    """

    def __init__(
        self,
        vocab_size: int | None = None,
        input_dim: int | None = None,
        dim: int = 128,
        depth: int = 4,
        n_classes: int | None = None,
        lm: bool = False,
        causal: bool | None = None,
        variant: str = "seqboat",
        window: int = 128,
        chunk: int | None = None,
        qk_dim: int = 64,
        value_dim: int | None = None,
        attention: str = "softmax",
        ema_ndim: int = 16,
        ffn_hidden: int | None = None,
        ffn_activation: str = "gelu",
        heads: int = 4,
        pooling: str = "mean",
        dropout: float = 0.0,
        tie_embeddings: bool = False,
        **layer_kwargs,
    ):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if variant == "transformer":
            warnings.warn("SeqBoat(variant='transformer') is deprecated and will be removed in 0.3; use "
                          "smakit.models.Transformer (mlp_hidden= for ffn_hidden=), which has the same layers",
                          FutureWarning, stacklevel=2)
        causal = default(causal, lm)
        check_activation(ffn_activation, "ffn_activation")
        targets = layer_kwargs.pop("density_target", None)
        if not isinstance(targets, (list, tuple)):
            targets = [targets] * depth
        elif len(targets) != depth:
            raise ValueError(f"density_target must be a float or a list of {depth} (one per layer), got {targets!r}")

        def layers():  # made after the embedding (the initialisation order of seeded runs)
            for i in range(depth):
                if variant == "transformer":
                    yield TransformerLayer(dim, heads, causal, ffn_hidden, dropout, ffn_activation)
                    continue
                mode = {"seqboat": "sparse", "ema_only": "none"}.get(variant, "always")
                chunked = variant == "mega_chunk"
                yield SeqBoatLayer(dim, causal=causal, window=default(chunk, window) if chunked else window,
                                   qk_dim=qk_dim, value_dim=value_dim, attention=attention, mode=mode,
                                   chunked=chunked, ema_ndim=ema_ndim, dropout=dropout,
                                   density_target=targets[i], **layer_kwargs)
                if exists(ffn_hidden):
                    yield FeedForwardBlock(dim, ffn_hidden, ffn_activation, dropout=dropout)

        super().__init__(layers(), dim, vocab_size=vocab_size, input_dim=input_dim, n_classes=n_classes, lm=lm,
                         causal=causal, pooling=pooling, tie_embeddings=tie_embeddings)
        self.variant, self.depth = variant, depth

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, " + super().extra_repr()
