"""Multi-head self-attention with rotary positions, over a full or compacted sequence."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .position import apply_rotary, rotary_frequencies


class SelfAttention(nn.Module):
    """Multi-head attention over a (possibly compacted) sequence, rotary by original positions.

    Order along the sequence is what causality means here: behind :func:`smakit.sma` the
    compacted order is the original order, so causal attention over routed tokens never sees
    a later token. Padding keys (``mask`` False) are never attended to; a padding query
    attends to itself, so no row is empty.

    Args:
        dim (int): model size ``D``.
        heads (int): attention heads (``dim`` divisible by it). Default: 4.
        causal (bool): each token attends only to itself and earlier tokens. Default: ``True``.

    Shape:
        - x: ``[B, K, D]``; mask: ``[B, K]`` bool; positions: ``[B, K]`` int64
          (default ``0 .. K-1``)
        - output: ``[B, K, D]``

    Examples::

        >>> attn = SelfAttention(32, heads=4)
        >>> attn(torch.randn(2, 9, 32)).shape
        torch.Size([2, 9, 32])
    """

    def __init__(self, dim: int, heads: int = 4, causal: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.dim, self.heads, self.causal = dim, heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.register_buffer("inv_freq", rotary_frequencies(dim // heads), persistent=False)

    def reset_parameters(self) -> None:
        self.qkv.reset_parameters()
        self.out.reset_parameters()

    def forward(self, x: Tensor, mask: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        B, K, _ = x.shape
        if positions is None:
            positions = torch.arange(K, device=x.device).expand(B, K)
        q, k, v = rearrange(self.qkv(x), "b l (t h d) -> t b h l d", t=3, h=self.heads)
        pos = positions.clamp(min=0).unsqueeze(1)  # [B, 1, K], padding slots read position 0
        q, k = apply_rotary(q, pos, self.inv_freq), apply_rotary(k, pos, self.inv_freq)
        allowed = None
        if mask is not None:
            allowed = mask[:, None, None, :]  # [B, 1, 1, K]
            if self.causal:
                allowed = allowed & torch.ones(K, K, dtype=torch.bool, device=x.device).tril()
            allowed = allowed | torch.eye(K, dtype=torch.bool, device=x.device)  # no empty rows
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=self.causal and mask is None)
        return self.out(rearrange(o, "b h l d -> b l (h d)"))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, causal={self.causal}"
