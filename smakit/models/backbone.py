"""The one sequence model every smakit model is: embedding, residual layers, final norm, head."""

from __future__ import annotations

import inspect
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .._utils import default, exists
from ..routing.stats import RoutingStats, collect_routing_stats, summarize_routing
from ..sma import aux_losses
from ..streaming import check_left_padded

POOLINGS = ("mean", "last", "max")


class SequenceModel(nn.Module):
    """Embedding, a stack of residual layers, a final norm and a per-token or pooled head.

    Input is either token ids ``[B, L]`` (``vocab_size``) or features ``[B, L, C]``
    (``input_dim``), checked here once per call. Each layer is called as
    ``layer(x, mask)`` on ``[B, L, D]`` and adds its own residual. With ``lm=True`` the head
    gives ``[B, L, vocab_size]`` logits per token; with ``n_classes`` the last hidden states
    are pooled over real tokens into ``[B, n_classes]`` logits. An empty batch or sequence
    skips the layers. When the model is causal and every layer has ``step``/``init_state``,
    :meth:`prefill` and :meth:`step` decode token by token (:attr:`supports_step`).

    :class:`~smakit.models.SeqBoat`, :class:`~smakit.models.Transformer`,
    :class:`~smakit.models.SMATransformer` and :class:`~smakit.models.HybridSMA` are this
    model with their own layers.

    Args:
        layers (iterable of nn.Module): residual layers ``[B, L, D] -> [B, L, D]``; read
            after the embedding is made, so a generator keeps the initialisation order
            (embedding, layers, norm, head) of seeded runs.
        dim (int): model size ``D``.
        vocab_size (int, optional): token vocabulary (token input and/or LM head).
        input_dim (int, optional): feature size ``C`` of float inputs (instead of tokens).
        n_classes (int, optional): classification head size.
        lm (bool): language-model head over ``vocab_size``. Default: ``False``.
        causal (bool, optional): whether the layers are causal. Default: ``lm``.
        pooling (str): ``"mean"``, ``"last"`` or ``"max"`` over real tokens. Default: ``"mean"``.
        tie_embeddings (bool): share the LM head with the token embedding. Default: ``False``.

    Attributes:
        embed (nn.Embedding or nn.Linear): the input map to ``D``.
        layers (nn.ModuleList): the residual layers.
        final_norm (nn.LayerNorm): the norm before the head.
        head (nn.Linear): ``D -> vocab_size`` or ``D -> n_classes``.

    Shape:
        - inputs: ``[B, L]`` int64 or ``[B, L, C]`` float; mask: ``[B, L]`` bool (True = real)
        - output: ``[B, n_classes]`` or ``[B, L, vocab_size]``

    Examples::

        >>> from smakit.models import FeedForwardBlock
        >>> layers = [FeedForwardBlock(16, 32) for _ in range(2)]
        >>> model = SequenceModel(layers, 16, vocab_size=10, lm=True)
        >>> model(torch.randint(0, 10, (2, 7))).shape
        torch.Size([2, 7, 10])
        >>> model.supports_step
        True
    """

    def __init__(
        self,
        layers: Iterable[nn.Module],
        dim: int,
        *,
        vocab_size: int | None = None,
        input_dim: int | None = None,
        n_classes: int | None = None,
        lm: bool = False,
        causal: bool | None = None,
        pooling: str = "mean",
        tie_embeddings: bool = False,
    ):
        super().__init__()
        if not exists(vocab_size) and not exists(input_dim):
            raise ValueError("give vocab_size (token input) or input_dim (feature input)")
        if lm == exists(n_classes):
            raise ValueError("give exactly one head: n_classes=... or lm=True")
        if lm and not exists(vocab_size):
            raise ValueError("lm=True needs vocab_size")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if lm and causal is False:
            raise ValueError("lm=True needs causal layers (causal=False would let each token see the next one "
                             "it predicts); leave causal unset or pass causal=True")
        self.lm, self.pooling, self.causal = lm, pooling, default(causal, lm)
        self.vocab_size, self.input_dim, self.dim = vocab_size, input_dim, dim
        self.embed = nn.Linear(input_dim, dim) if exists(input_dim) else nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(layers)
        self.final_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size if lm else n_classes)
        if tie_embeddings:
            if not (lm and isinstance(self.embed, nn.Embedding)):
                raise ValueError("tie_embeddings needs lm=True with token input")
            self.head.weight = self.embed.weight

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the routed transformers saved the embedding under embed.proj.* and the final norm under norm.*
        for old, new in (("embed.proj.", "embed."), ("norm.", "final_norm.")):
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict.setdefault(prefix + new + key[len(prefix + old):], state_dict.pop(key))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_inputs(self, inputs, mask) -> None:
        tokens = isinstance(self.embed, nn.Embedding)
        want = "[B, L] integer token ids" if tokens else f"[B, L, {self.input_dim}] float features"
        if not isinstance(inputs, Tensor):
            raise TypeError(f"inputs must be a Tensor of {want}, got {type(inputs).__name__}")
        ok = (inputs.dim() == 2 and not inputs.is_floating_point() and inputs.dtype != torch.bool) if tokens else \
            (inputs.dim() == 3 and inputs.is_floating_point() and inputs.shape[-1] == self.input_dim)
        if not ok:
            raise ValueError(f"inputs must be {want}, got shape {tuple(inputs.shape)} dtype {inputs.dtype}")
        if mask is None:
            return
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = f"dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a bool Tensor [B, L] (True = real token), got {got}")
        if mask.shape != inputs.shape[:2]:
            raise ValueError(f"mask must have shape [B, L] = {tuple(inputs.shape[:2])}, got {tuple(mask.shape)}")

    def forward(self, inputs: Tensor, mask: Tensor | None = None) -> Tensor:
        self._check_inputs(inputs, mask)
        x = self.embed(inputs)
        if x.device.type == "meta":
            raise RuntimeError(f"{type(self).__name__} cannot run on the meta device (the EMA's FFT and the "
                               "routing's data-dependent shapes have no meta kernels); build on meta, then "
                               "model.to_empty(device=...) and load weights")
        if x.shape[0] and x.shape[1]:  # an empty batch or sequence skips the layers
            for layer in self.layers:
                x = layer(x, mask)
        x = self.final_norm(x)
        return self.head(x) if self.lm else self.head(self.pool(x, mask))

    def pool(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Pool ``[B, L, D]`` over real tokens into ``[B, D]`` (zeros for an empty sequence)."""
        B, L, D = x.shape
        if L == 0:
            return x.new_zeros(B, D)
        mask = default(mask, torch.ones(B, L, dtype=torch.bool, device=x.device))
        m = mask.unsqueeze(-1)
        if self.pooling == "mean":
            return (x * m).sum(1) / m.sum(1).clamp(min=1)
        if self.pooling == "max":
            return x.masked_fill(~m, torch.finfo(x.dtype).min).amax(1)
        last = mask.long().cumsum(1).argmax(1)  # index of the last real token
        return x[torch.arange(B, device=x.device), last]

    def routing_stats(self) -> dict[str, list]:
        """Routing of the last forward, one list entry per layer, as Python floats.

        Layers with their own ``stats()`` (:class:`~smakit.models.SeqBoatLayer`,
        :class:`~smakit.models.TransformerLayer`) give ``ratio`` (fraction of real tokens the
        attention ran on) and ``span``; otherwise each routed :func:`~smakit.sma` block gives
        ``ratio`` (summed over its modules), ``per_module`` (``{name: ratio}``) and, for
        top-k routers with a causal predictor, ``agreement``.
        """
        return _layer_routing_stats(self.layers)

    def aux_loss(self) -> Tensor:
        """Sum of the routers' auxiliary losses of the last forward (0 if none was requested)."""
        return aux_losses(self)

    # decoding
    @property
    def supports_step(self) -> bool:
        """Causal, and every layer decodes one token at a time (has ``step``/``init_state``)."""
        return self.causal and all(hasattr(m, "step") and hasattr(m, "init_state") for m in self.layers)

    def _check_decoding(self, what: str) -> None:
        if not self.supports_step:
            raise RuntimeError(f"{what} needs a causal model whose layers all have step(); {type(self).__name__} "
                               f"(causal={self.causal}) has none, so generate() re-runs the forward")

    def init_state(self, batch_size: int, device=None, dtype=None) -> list:
        """Decoding state of every layer."""
        self._check_decoding("init_state()")
        return [layer.init_state(batch_size, device, dtype) for layer in self.layers]

    def step(self, inputs: Tensor, state: list) -> tuple[Tensor, list]:
        """One token (``[B]`` ids or ``[B, C]`` features) -> ``(logits [B, vocab], state)``."""
        if not isinstance(state, list) or len(state) != len(self.layers):
            n = len(state) if isinstance(state, (list, tuple)) else type(state).__name__
            raise ValueError(f"state must be the list of {len(self.layers)} layer states from init_state() or "
                             f"prefill(), got {n}")
        want = 1 if isinstance(self.embed, nn.Embedding) else 2
        if not isinstance(inputs, Tensor) or inputs.dim() != want:
            shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
            raise ValueError(f"inputs must have shape {'[B]' if want == 1 else '[B, C]'} (one token per row), got {shape}")
        x = self.embed(inputs)
        new = []
        for layer, s in zip(self.layers, state):
            x, s = layer.step(x, s)
            new.append(s)
        return self.head(self.final_norm(x)), new

    def prefill(self, prompt: Tensor, mask: Tensor | None = None) -> tuple[Tensor, list]:
        """The parallel forward over ``prompt`` (``[B, T]`` ids) and the decoding state after it.

        Prompts of different lengths go in one batch padded on the left, with ``mask``: each
        row then reads as its real tokens alone (every layer keeps padding out of its state,
        its routing and its attention window), so its logits at the real tokens, and stepping
        on from its state, equal :meth:`prefill` of the row alone. Positions count the padding
        in some layers: an offset of the whole row, which the position differences that
        attention reads (relative bias, rotary) do not see.

        Args:
            prompt (Tensor): ``[B, T]`` int64 ids (or ``[B, T, C]`` features).
            mask (Tensor, optional): ``[B, T]`` bool, True = real token; only left padding
                (each row's real tokens last, no hole), checked. Default: ``None`` (all real).

        Returns:
            ``(logits [B, T, vocab], state)``: the logits equal :meth:`forward` and the state
            equals stepping through the prompt with :meth:`step`, at the cost of one forward.
            With ``mask``, the logits at padding are zeros.

        Raises:
            ValueError: ``mask`` is not left padding, or a layer cannot keep padding out (its
                ``prefill`` takes no mask, or it has a state but no ``prefill``).

        Examples::

            >>> from smakit.models import SeqBoat
            >>> lm = SeqBoat(vocab_size=50, dim=32, depth=2, lm=True, window=4,
            ...              qk_dim=16).eval()
            >>> logits, state = lm.prefill(torch.randint(0, 50, (2, 9)))
            >>> nxt, state = lm.step(logits[:, -1].argmax(-1), state)
            >>> nxt.shape
            torch.Size([2, 50])
            >>> mask = torch.tensor([[True] * 9, [False] * 4 + [True] * 5])
            >>> logits, state = lm.prefill(torch.randint(0, 50, (2, 9)), mask)
            >>> logits.shape
            torch.Size([2, 9, 50])
        """
        self._check_decoding("prefill()")
        self._check_inputs(prompt, mask)
        if exists(mask):
            check_left_padded(mask, prompt.shape[:2])
        x = self.embed(prompt)
        state = []
        for i, layer in enumerate(self.layers):
            if hasattr(layer, "prefill"):
                if exists(mask) and not _takes_mask(layer.prefill):
                    raise ValueError(f"mask cannot be used: layer {i} ({type(layer).__name__}) has a prefill() "
                                     "without a mask argument, so it cannot keep padding out of its state")
                x, s = layer.prefill(x) if mask is None else layer.prefill(x, mask=mask)
            else:  # stateless (a feed-forward block)
                s = layer.init_state(x.shape[0], x.device)
                if exists(mask) and s is not None:
                    raise ValueError(f"mask cannot be used: layer {i} ({type(layer).__name__}) has a decoding "
                                     "state but no prefill(x, mask), so it cannot keep padding out of it")
                x = layer(x)
            state.append(s)
        logits = self.head(self.final_norm(x))
        if exists(mask):
            logits = logits.masked_fill(~mask.unsqueeze(-1), 0.0)  # padding: zeros, whatever the layers left
        return logits, state

    def extra_repr(self) -> str:
        head = "lm=True" if self.lm else f"pooling={self.pooling!r}"
        return f"dim={self.dim}, causal={self.causal}, {head}"


def _layer_routing_stats(layers: nn.ModuleList) -> dict[str, list]:
    """What :meth:`SequenceModel.routing_stats` reports, from the one collector.

    Layers that report for themselves (SeqBoat and Transformer layers) give ``ratio`` and
    ``span`` per layer; a stack of routed blocks gives ``ratio``, ``per_module`` and, for top-k
    routers with a causal predictor, ``agreement``.
    """
    stats = summarize_routing(collect_routing_stats(layers))
    if any(isinstance(getattr(layer, "routing_stats", None), RoutingStats) for layer in layers):
        return {"ratio": stats["ratio"], "span": [0.0 if s is None else s for s in stats["span"]]}
    return {key: value for key, value in stats.items() if key != "span"}


def _takes_mask(fn) -> bool:
    """Whether a layer's ``prefill`` accepts a ``mask`` argument."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "mask" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
