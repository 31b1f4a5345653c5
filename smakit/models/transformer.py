"""The dense baseline: a pre-norm Transformer layer, a feed-forward block, and the Transformer model."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ..modules import MLP, SelfAttention
from ..modules.mlp import check_activation
from ..routing.stats import RoutingStats
from .backbone import SequenceModel


class TransformerLayer(nn.Module):
    """Pre-norm Transformer layer: full multi-head attention (rotary) then an MLP.

    The quadratic baseline: every token attends to every (earlier, when causal) real token.
    ``x = x + attn(norm1(x))``; ``x = x + mlp(norm2(x))``, with the attention a
    :class:`~smakit.modules.SelfAttention`.

    Args:
        dim (int): model size ``D``.
        heads (int): attention heads (``dim`` divisible by it). Default: 4.
        causal (bool): causal attention. Default: ``True``.
        mlp_hidden (int, optional): MLP hidden size. Default: ``4 * dim``.
        dropout (float): dropout on the sub-layer outputs. Default: 0.0.
        mlp_activation (str): ``"gelu"`` or ``"swiglu"`` (see :class:`~smakit.modules.MLP`). Default: ``"gelu"``.

    Shape:
        - x: ``[B, L, D]``; mask: ``[B, L]`` bool (True = real token)
        - output: ``[B, L, D]``

    Examples::

        >>> layer = TransformerLayer(32, heads=4)
        >>> layer(torch.randn(2, 9, 32)).shape
        torch.Size([2, 9, 32])
    """

    def __init__(self, dim: int, heads: int = 4, causal: bool = True, mlp_hidden: int | None = None,
                 dropout: float = 0.0, mlp_activation: str = "gelu"):
        super().__init__()
        self.dim, self.heads, self.causal = dim, heads, causal
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, causal)
        self.mlp = MLP(dim, mlp_hidden, activation=mlp_activation, dropout=dropout)
        self.drop = nn.Dropout(dropout)
        self._span: Tensor | None = None
        self._real: Tensor | None = None  # [B, L] real tokens of the last forward

    def reset_parameters(self) -> None:
        for m in (self.norm1, self.norm2, self.attn, self.mlp):
            m.reset_parameters()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # before SelfAttention, the layer held its projections itself as qkv.* and proj.*
        for old, new in (("qkv.", "attn.qkv."), ("proj.", "attn.out.")):
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict.setdefault(prefix + new + key[len(prefix + old):], state_dict.pop(key))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), mask))
        x = x + self.drop(self.mlp(self.norm2(x)))
        with torch.no_grad():
            B, L, _ = x.shape
            real = torch.ones(B, L, dtype=torch.bool, device=x.device) if mask is None else mask
            if self.causal:
                span = torch.arange(1, L + 1, device=x.device).expand(B, L).float()
            else:
                span = real.sum(1, keepdim=True).float().expand(B, L)
            self._span = (span * real).sum() / real.sum().clamp(min=1)
            self._real = real
        return x

    @property
    def routing_stats(self) -> RoutingStats | None:
        """Fixed pattern: ratio 1, ``span`` the mean number of positions each real token attends over."""
        return None if self._real is None else RoutingStats.fixed(self._real, span=self._span)

    def stats(self) -> dict[str, Tensor]:
        """Deprecated: ``{"ratio": 1, "span": ...}``; read :attr:`routing_stats`."""
        warnings.warn("TransformerLayer.stats() is deprecated, use TransformerLayer.routing_stats (a RoutingStats) "
                      "or smakit.routing.collect_routing_stats(model); removed in 0.3", FutureWarning, stacklevel=2)
        return {"ratio": torch.ones(()), "span": self._span if self._span is not None else torch.zeros(())}

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, causal={self.causal}"


class FeedForwardBlock(nn.Module):
    """Pre-norm residual MLP sub-layer ``x + MLP(norm(x))`` (optional after each SeqBoat layer).

    Args:
        dim (int): model size.
        hidden (int, optional): hidden size. Default: ``4 * dim``.
        activation (str): ``"gelu"`` or ``"swiglu"``. Default: ``"gelu"``.
        dropout (float): dropout. Default: 0.0.

    Shape:
        - x: ``[B, L, D]`` (or ``[B, D]`` in :meth:`step`); output: same

    Examples::

        >>> block = FeedForwardBlock(16, 32)
        >>> block(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(self, dim: int, hidden: int | None = None, activation: str = "gelu", dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = MLP(dim, hidden, activation=activation, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.mlp.reset_parameters()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return x + self.drop(self.mlp(self.norm(x)))

    def init_state(self, batch_size: int, device=None, dtype=None) -> None:
        return None

    def step(self, x: Tensor, state: None) -> tuple[Tensor, None]:
        return self.forward(x), None


class Transformer(SequenceModel):
    """The dense baseline: a :class:`SequenceModel` of :class:`TransformerLayer` s.

    Every token attends to every (earlier, when causal) real token in every layer. It has no
    decoding cache: :func:`~smakit.models.generate` re-runs the forward on the growing
    sequence.

    Args:
        vocab_size (int, optional): token vocabulary (token input and/or LM head).
        input_dim (int, optional): feature size ``C`` for float inputs.
        dim (int): model size. Default: 128.
        depth (int): layers. Default: 4.
        n_classes (int, optional): classification head size.
        lm (bool): language-model head over ``vocab_size``. Default: ``False``.
        heads (int): attention heads. Default: 4.
        causal (bool, optional): causal attention. Default: ``lm``.
        mlp_hidden (int, optional): MLP hidden size. Default: ``4 * dim``.
        pooling (str): ``"mean"``, ``"last"`` or ``"max"`` over real tokens. Default: ``"mean"``.
        dropout (float): dropout on the sub-layer outputs. Default: 0.0.
        tie_embeddings (bool): share the LM head with the token embedding. Default: ``False``.
        mlp_activation (str): ``"gelu"`` or ``"swiglu"``. Default: ``"gelu"``.

    Shape:
        - inputs: ``[B, L]`` int64 or ``[B, L, C]`` float; mask: ``[B, L]`` bool
        - output: ``[B, n_classes]`` or ``[B, L, vocab_size]``

    Examples::

        >>> model = Transformer(vocab_size=100, dim=32, depth=2, lm=True)
        >>> model(torch.randint(0, 100, (2, 12))).shape
        torch.Size([2, 12, 100])
    """

    def __init__(self, vocab_size: int | None = None, input_dim: int | None = None, dim: int = 128, depth: int = 4,
                 n_classes: int | None = None, lm: bool = False, heads: int = 4, causal: bool | None = None,
                 mlp_hidden: int | None = None, pooling: str = "mean", dropout: float = 0.0,
                 tie_embeddings: bool = False, mlp_activation: str = "gelu"):
        causal = lm if causal is None else causal
        check_activation(mlp_activation, "mlp_activation")
        layers = (TransformerLayer(dim, heads, causal, mlp_hidden, dropout, mlp_activation) for _ in range(depth))
        super().__init__(layers, dim, vocab_size=vocab_size, input_dim=input_dim, n_classes=n_classes, lm=lm,
                         causal=causal, pooling=pooling, tie_embeddings=tie_embeddings)
        self.depth, self.heads = depth, heads
