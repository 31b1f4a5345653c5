"""Baseline layers for the ablations: a plain Transformer layer and a feed-forward block."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..modules import MLP
from ..modules.position import apply_rotary, rotary_frequencies
from ..routing.stats import RoutingStats


class TransformerLayer(nn.Module):
    """Pre-norm Transformer layer: full multi-head attention (rotary) then an MLP.

    The quadratic baseline: every token attends to every (earlier, when causal) real token.

    Args:
        dim (int): model size ``D``.
        heads (int): attention heads (``dim`` divisible by it). Default: 4.
        causal (bool): causal attention. Default: ``True``.
        mlp_hidden (int, optional): MLP hidden size. Default: ``4 * dim``.
        dropout (float): dropout on the sub-layer outputs. Default: 0.0.

    Shape:
        - x: ``[B, L, D]``; mask: ``[B, L]`` bool (True = real token)
        - output: ``[B, L, D]``

    Examples::

        >>> layer = TransformerLayer(32, heads=4)
        >>> layer(torch.randn(2, 9, 32)).shape
        torch.Size([2, 9, 32])
    """

    def __init__(self, dim: int, heads: int = 4, causal: bool = True, mlp_hidden: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.dim, self.heads, self.causal = dim, heads, causal
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = MLP(dim, mlp_hidden, dropout=dropout)
        self.drop = nn.Dropout(dropout)
        self.register_buffer("inv_freq", rotary_frequencies(dim // heads), persistent=False)
        self._span: Tensor | None = None

    def reset_parameters(self) -> None:
        for m in (self.norm1, self.norm2, self.qkv, self.proj, self.mlp):
            m.reset_parameters()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        B, L, _ = x.shape
        q, k, v = rearrange(self.qkv(self.norm1(x)), "b l (t h d) -> t b h l d", t=3, h=self.heads)
        pos = torch.arange(L, device=x.device)
        q, k = apply_rotary(q, pos, self.inv_freq), apply_rotary(k, pos, self.inv_freq)
        attn_mask = None
        if mask is not None:
            keys = mask[:, None, None, :]
            if self.causal:
                keys = keys & torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
            attn_mask = keys
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           is_causal=self.causal and mask is None)
        x = x + self.drop(self.proj(rearrange(o, "b h l d -> b l (h d)")))
        x = x + self.drop(self.mlp(self.norm2(x)))
        with torch.no_grad():
            real = torch.ones(B, L, dtype=torch.bool, device=x.device) if mask is None else mask
            if self.causal:
                span = (pos + 1).expand(B, L).float()
            else:
                span = real.sum(1, keepdim=True).float().expand(B, L)
            self._span = (span * real).sum() / real.sum().clamp(min=1)
            self._real = real
        return x

    @property
    def routing_stats(self) -> RoutingStats | None:
        """Fixed pattern: ratio 1, ``span`` the mean number of positions each real token attends over."""
        real = getattr(self, "_real", None)
        return None if real is None else RoutingStats.fixed(real, span=self._span)

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
