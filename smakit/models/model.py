"""SeqBoat models (and their ablation variants) with classification or language-model heads."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._utils import default, exists
from ..routing.stats import collect_routing_stats, summarize_routing
from ..sma import aux_losses
from .baselines import FeedForwardBlock, TransformerLayer
from .seqboat import SeqBoatLayer

VARIANTS = ("seqboat", "seqboat_full", "mega_chunk", "ema_only", "transformer")
POOLINGS = ("mean", "last", "max")


class SeqBoat(nn.Module):
    """A stack of SeqBoat layers (or an ablation variant) with an embedding and a head.

    Input is either token ids ``[B, L]`` (``vocab_size``) or features ``[B, L, C]``
    (``input_dim``). With ``n_classes`` the model pools the last hidden states over real
    tokens into ``[B, n_classes]`` logits; with ``lm=True`` it returns ``[B, L, vocab_size]``.

    Variants, all from the same parts: ``"seqboat"`` (routed local attention),
    ``"seqboat_full"`` (attention on every token), ``"mega_chunk"`` (attention within fixed
    chunks of ``chunk`` tokens, no router), ``"ema_only"`` and ``"transformer"`` (full
    attention + MLP per layer).

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
        heads (int): heads of the transformer variant. Default: 4.
        pooling (str): ``"mean"``, ``"last"`` or ``"max"`` over real tokens. Default: ``"mean"``.
        dropout (float): dropout. Default: 0.0.
        tie_embeddings (bool): share the LM head with the token embedding. Default: ``False``.
        **layer_kwargs: further :class:`SeqBoatLayer` options (``prenorm``, ``truncation``,
            ``max_distance``, ``straight_through``, ``density_target``, ...). A list
            ``density_target`` gives one target per routed layer.

    Shape:
        - inputs: ``[B, L]`` int64 or ``[B, L, C]`` float; mask: ``[B, L]`` bool
        - output: ``[B, n_classes]`` or ``[B, L, vocab_size]``

    Examples::

        >>> model = SeqBoat(vocab_size=100, dim=32, depth=2, lm=True, window=8, qk_dim=16)
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
        heads: int = 4,
        pooling: str = "mean",
        dropout: float = 0.0,
        tie_embeddings: bool = False,
        **layer_kwargs,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
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
        self.variant, self.lm, self.pooling = variant, lm, pooling
        self.causal = default(causal, lm)
        self.vocab_size, self.input_dim, self.dim, self.depth = vocab_size, input_dim, dim, depth
        self.embed = nn.Linear(input_dim, dim) if exists(input_dim) else nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList()
        targets = layer_kwargs.pop("density_target", None)
        if not isinstance(targets, (list, tuple)):
            targets = [targets] * depth
        elif len(targets) != depth:
            raise ValueError(f"density_target must be a float or a list of {depth} (one per layer), got {targets!r}")
        for i in range(depth):
            if variant == "transformer":
                self.layers.append(TransformerLayer(dim, heads, self.causal, ffn_hidden, dropout))
                continue
            mode = {"seqboat": "sparse", "ema_only": "none"}.get(variant, "always")
            chunked = variant == "mega_chunk"
            w = default(chunk, window) if chunked else window
            self.layers.append(SeqBoatLayer(dim, causal=self.causal, window=w, qk_dim=qk_dim, value_dim=value_dim,
                                            attention=attention, mode=mode, chunked=chunked, ema_ndim=ema_ndim,
                                            dropout=dropout, density_target=targets[i], **layer_kwargs))
            if exists(ffn_hidden):
                self.layers.append(FeedForwardBlock(dim, ffn_hidden, dropout=dropout))
        self.final_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size if lm else n_classes)
        if tie_embeddings:
            if not (lm and isinstance(self.embed, nn.Embedding)):
                raise ValueError("tie_embeddings needs lm=True with token input")
            self.head.weight = self.embed.weight

    def forward(self, inputs: Tensor, mask: Tensor | None = None) -> Tensor:
        x = self.embed(inputs)
        if x.device.type == "meta":
            raise RuntimeError("SeqBoat cannot run on the meta device (the EMA's FFT has no meta kernel); "
                               "build on meta, then model.to_empty(device=...) and load weights")
        if x.shape[0] and x.shape[1]:  # an empty batch or sequence skips the layers
            for layer in self.layers:
                x = layer(x, mask)
        x = self.final_norm(x)
        return self.head(x) if self.lm else self.head(self.pool(x, mask))

    def pool(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Pool ``[B, L, D]`` over real tokens into ``[B, D]``."""
        B, L, _ = x.shape
        mask = default(mask, torch.ones(B, L, dtype=torch.bool, device=x.device))
        m = mask.unsqueeze(-1)
        if self.pooling == "mean":
            return (x * m).sum(1) / m.sum(1).clamp(min=1)
        if self.pooling == "max":
            return x.masked_fill(~m, torch.finfo(x.dtype).min).amax(1)
        last = (mask.long().cumsum(1).argmax(1))  # index of the last real token
        return x[torch.arange(B, device=x.device), last]

    def routing_stats(self) -> dict[str, list[float]]:
        """Per layer (attention layers only) ``ratio`` and ``span`` of the last forward, as floats."""
        stats = summarize_routing(collect_routing_stats(self))
        return {"ratio": stats["ratio"], "span": [0.0 if s is None else s for s in stats["span"]]}

    def aux_loss(self) -> Tensor:
        """Sum of the routers' auxiliary losses of the last forward (0 if none was requested)."""
        return aux_losses(self)

    # decoding
    @property
    def supports_step(self) -> bool:
        return self.causal and self.variant != "transformer"

    def init_state(self, batch_size: int, device=None, dtype=None) -> list:
        """Decoding state of every layer."""
        if not self.supports_step:
            raise RuntimeError("step() needs a causal, non-transformer variant")
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

    def prefill(self, prompt: Tensor) -> tuple[Tensor, list]:
        """The parallel forward over ``prompt`` (``[B, T]`` ids) and the decoding state after it.

        Returns:
            ``(logits [B, T, vocab], state)``: the logits equal :meth:`forward` and the state
            equals stepping through the prompt with :meth:`step`, at the cost of one forward.

        Examples::

            >>> lm = SeqBoat(vocab_size=50, dim=32, depth=2, lm=True, window=4,
            ...              qk_dim=16).eval()
            >>> logits, state = lm.prefill(torch.randint(0, 50, (2, 9)))
            >>> nxt, state = lm.step(logits[:, -1].argmax(-1), state)
            >>> nxt.shape
            torch.Size([2, 50])
        """
        if not self.supports_step:
            raise RuntimeError("prefill() needs a causal, non-transformer variant")
        x = self.embed(prompt)
        state = []
        for layer in self.layers:
            if hasattr(layer, "prefill"):
                x, s = layer.prefill(x)
            else:  # stateless (a feed-forward block)
                x, s = layer(x), layer.init_state(x.shape[0], x.device)
            state.append(s)
        return self.head(self.final_norm(x)), state

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, causal={self.causal}, lm={self.lm}, pooling={self.pooling!r}"
