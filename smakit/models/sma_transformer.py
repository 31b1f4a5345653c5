"""Routed transformers from the generic parts: an SMA-MLP transformer (Mixture-of-Depths
style) and a multi-module hybrid where one router chooses attention, MLP, conv or skip."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..modules import MLP, CausalConv
from ..modules.position import apply_rotary, rotary_frequencies
from ..routing.stats import collect_routing_stats, summarize_routing
from ..sma import SparseModularActivation, sma


class SelfAttention(nn.Module):
    """Multi-head attention over a (possibly compacted) sequence, rotary by original positions.

    Order along the sequence is what causality means here: behind :func:`smakit.sma` the
    compacted order is the original order, so causal attention over routed tokens never sees
    a later token.

    Args:
        dim (int): model size ``D``.
        heads (int): attention heads. Default: 4.
        causal (bool): each token attends only to itself and earlier tokens. Default: ``True``.

    Shape:
        - x: ``[B, K, D]``; mask: ``[B, K]`` bool; positions: ``[B, K]`` int64
        - output: ``[B, K, D]``
    """

    def __init__(self, dim: int, heads: int = 4, causal: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.dim, self.heads, self.causal = dim, heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.register_buffer("inv_freq", rotary_frequencies(dim // heads), persistent=False)

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


class _Embed(nn.Module):
    """Token embedding or a linear map of float features."""

    def __init__(self, dim: int, vocab_size: int | None, input_dim: int | None):
        super().__init__()
        if vocab_size is None and input_dim is None:
            raise ValueError("give vocab_size (token input) or input_dim (float input)")
        self.proj = nn.Linear(input_dim, dim) if input_dim is not None else nn.Embedding(vocab_size, dim)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.proj(inputs)


class _RoutedStack(nn.Module):
    """Embedding, ``depth`` residual layers, final norm, pooled or per-token head."""

    supports_step = False  # generation re-runs the forward on the growing sequence

    def __init__(self, dim, depth, vocab_size, input_dim, n_classes, lm, make_layer):
        super().__init__()
        if lm == (n_classes is not None):
            raise ValueError("give n_classes (classification) or lm=True (language model), not both")
        if lm and vocab_size is None:
            raise ValueError("lm=True needs vocab_size")
        self.lm = lm
        self.embed = _Embed(dim, vocab_size if input_dim is None else None, input_dim)
        self.layers = nn.ModuleList(make_layer(i) for i in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size if lm else n_classes)

    def forward(self, inputs: Tensor, mask: Tensor | None = None) -> Tensor:
        x = self.embed(inputs)
        for layer in self.layers:
            x = layer(x, mask)
        x = self.norm(x)
        if self.lm:
            return self.head(x)
        if mask is None:
            return self.head(x.mean(1))
        m = mask.unsqueeze(-1).to(x.dtype)
        return self.head((x * m).sum(1) / m.sum(1).clamp(min=1))

    def routing_stats(self) -> dict[str, list[float]]:
        """Per routed layer, the fraction of real tokens routed to each module (floats), and, for
        top-k routers with a causal predictor, how often its guess agreed with top-k."""
        stats = summarize_routing(collect_routing_stats(self))
        return {key: value for key, value in stats.items() if key != "span"}


class _MoDLayer(nn.Module):
    def __init__(self, dim, heads, causal, hidden, routed, **sma_options):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, causal)
        mlp = MLP(dim, hidden)
        self.mlp = sma(mlp, dim, layout="flat", **sma_options) if routed else mlp

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = x + self.attn(self.norm1(x), mask)
        h = self.norm2(x)
        return x + (self.mlp(h, mask) if isinstance(self.mlp, SparseModularActivation) else self.mlp(h))


class SMATransformer(_RoutedStack):
    """Transformer whose MLPs run only on routed tokens (Mixture-of-Depths style).

    Each layer: ``x = x + attention(norm(x))``; ``x = x + sma(MLP)(norm(x))``, the MLP in the
    flat layout (it is pointwise, so no padding is computed). With the default threshold
    router each token decides alone, so the model stays causal; ``router="topk"`` gives a
    fixed compute budget (not causal; for a decoder add ``causal_predictor=True``, which
    routes by a learned per-token guess of the top-k choice in eval mode).

    Args:
        vocab_size (int, optional): token vocabulary (input, and output when ``lm``).
        input_dim (int, optional): feature size of float inputs.
        dim (int): model size. Default: 128.
        depth (int): layers. Default: 4.
        n_classes (int, optional): classification classes (mean pooling over real tokens).
        lm (bool): per-token language-model head. Default: ``False``.
        heads (int): attention heads. Default: 4.
        causal (bool, optional): causal attention. Default: ``lm``.
        mlp_hidden (int, optional): MLP hidden size. Default: ``4 * dim``.
        route_every (int): route the MLP of every n-th layer, the others run dense. Default: 1.
        **sma_options: :func:`smakit.sma` options (``router``, ``capacity``, ``density_target``...).

    Shape:
        - inputs: ``[B, L]`` int64 or ``[B, L, C]`` float; mask: ``[B, L]`` bool
        - output: ``[B, n_classes]`` or ``[B, L, vocab_size]``

    Examples::

        >>> model = SMATransformer(vocab_size=256, dim=32, depth=2, lm=True)
        >>> model(torch.randint(0, 256, (2, 10))).shape
        torch.Size([2, 10, 256])
    """

    def __init__(self, vocab_size=None, input_dim=None, dim=128, depth=4, n_classes=None, lm=False, heads=4,
                 causal=None, mlp_hidden=None, route_every=1, **sma_options):
        causal = lm if causal is None else causal
        if causal and sma_options.get("router") == "topk" and not sma_options.get("causal_predictor"):
            warnings.warn("router='topk' is not causal (a token's routing depends on later tokens); for a decoder "
                          "pass causal_predictor=True", UserWarning, stacklevel=2)

        def layer(i):
            return _MoDLayer(dim, heads, causal, mlp_hidden, routed=(i % route_every == route_every - 1),
                             **sma_options)

        super().__init__(dim, depth, vocab_size, input_dim, n_classes, lm, layer)


class _HybridLayer(nn.Module):
    def __init__(self, dim, heads, causal, hidden, kernel_size, **sma_options):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        experts = {"attention": SelfAttention(dim, heads, causal), "mlp": MLP(dim, hidden),
                   "conv": CausalConv(dim, kernel_size, causal=causal)}
        self.routed = sma(experts, dim, **sma_options)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        return x + self.routed(self.norm(x), mask)


class HybridSMA(_RoutedStack):
    """One router per layer chooses, for each token, attention, an MLP, a convolution or skip.

    Each layer: ``x = x + sma({"attention", "mlp", "conv"})(norm(x))`` with a causal
    threshold router over the four options (skip included). Attention and convolution run
    over the tokens routed to them, in order, with their original positions.

    Args:
        vocab_size, input_dim, dim, depth, n_classes, lm, heads, causal, mlp_hidden: as
            :class:`SMATransformer`.
        kernel_size (int, optional): convolution width. Default: 4 when causal, else 3.
        **sma_options: :func:`smakit.sma` options.

    Examples::

        >>> model = HybridSMA(vocab_size=16, dim=32, depth=2, n_classes=10, kernel_size=3)
        >>> model(torch.randint(0, 16, (2, 9))).shape
        torch.Size([2, 10])
    """

    def __init__(self, vocab_size=None, input_dim=None, dim=128, depth=4, n_classes=None, lm=False, heads=4,
                 causal=None, mlp_hidden=None, kernel_size=None, **sma_options):
        causal = lm if causal is None else causal
        kernel_size = (4 if causal else 3) if kernel_size is None else kernel_size

        def layer(i):
            return _HybridLayer(dim, heads, causal, mlp_hidden, kernel_size, **sma_options)

        super().__init__(dim, depth, vocab_size, input_dim, n_classes, lm, layer)
