"""Routed transformers from the generic parts: an SMA-MLP transformer (Mixture-of-Depths
style) and a multi-module hybrid where one router chooses attention, MLP, conv or skip."""

from __future__ import annotations

import warnings

from torch import Tensor, nn

from ..modules import MLP, CausalConv, SelfAttention
from ..sma import SparseModularActivation, sma
from .backbone import SequenceModel


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


class SMATransformer(SequenceModel):
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
        n_classes (int, optional): classification classes (pooled over real tokens).
        lm (bool): per-token language-model head. Default: ``False``.
        heads (int): attention heads. Default: 4.
        causal (bool, optional): causal attention. Default: ``lm``.
        mlp_hidden (int, optional): MLP hidden size. Default: ``4 * dim``.
        route_every (int): route the MLP of every n-th layer, the others run dense. Default: 1.
        pooling (str): ``"mean"``, ``"last"`` or ``"max"`` over real tokens. Default: ``"mean"``.
        tie_embeddings (bool): share the LM head with the token embedding. Default: ``False``.
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
                 causal=None, mlp_hidden=None, route_every=1, pooling="mean", tie_embeddings=False, **sma_options):
        causal = lm if causal is None else causal
        if causal and sma_options.get("router") == "topk" and not sma_options.get("causal_predictor"):
            warnings.warn("router='topk' is not causal (a token's routing depends on later tokens); for a decoder "
                          "pass causal_predictor=True", UserWarning, stacklevel=2)
        layers = (_MoDLayer(dim, heads, causal, mlp_hidden, routed=(i % route_every == route_every - 1),
                            **sma_options) for i in range(depth))
        super().__init__(layers, dim, vocab_size=vocab_size, input_dim=input_dim, n_classes=n_classes, lm=lm,
                         causal=causal, pooling=pooling, tie_embeddings=tie_embeddings)
        self.depth, self.heads = depth, heads


class _HybridLayer(nn.Module):
    def __init__(self, dim, heads, causal, hidden, kernel_size, **sma_options):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        modules = {"attention": SelfAttention(dim, heads, causal), "mlp": MLP(dim, hidden),
                   "conv": CausalConv(dim, kernel_size, causal=causal)}
        self.routed = sma(modules, dim, **sma_options)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        return x + self.routed(self.norm(x), mask)


class HybridSMA(SequenceModel):
    """One router per layer chooses, for each token, attention, an MLP, a convolution or skip.

    Each layer: ``x = x + sma({"attention", "mlp", "conv"})(norm(x))`` with a causal
    threshold router over the four options (skip included). Attention and convolution run
    over the tokens routed to them, in order, with their original positions. The arguments
    not listed below (``vocab_size`` ... ``tie_embeddings``) are those of :class:`SMATransformer`.

    Args:
        kernel_size (int, optional): convolution width. Default: 4 when causal, else 3.
        **sma_options: :func:`smakit.sma` options.

    Examples::

        >>> model = HybridSMA(vocab_size=16, dim=32, depth=2, n_classes=10, kernel_size=3)
        >>> model(torch.randint(0, 16, (2, 9))).shape
        torch.Size([2, 10])
    """

    def __init__(self, vocab_size=None, input_dim=None, dim=128, depth=4, n_classes=None, lm=False, heads=4,
                 causal=None, mlp_hidden=None, kernel_size=None, pooling="mean", tie_embeddings=False,
                 **sma_options):
        causal = lm if causal is None else causal
        kernel_size = (4 if causal else 3) if kernel_size is None else kernel_size
        layers = (_HybridLayer(dim, heads, causal, mlp_hidden, kernel_size, **sma_options) for _ in range(depth))
        super().__init__(layers, dim, vocab_size=vocab_size, input_dim=input_dim, n_classes=n_classes, lm=lm,
                         causal=causal, pooling=pooling, tie_embeddings=tie_embeddings)
        self.depth, self.heads = depth, heads
