"""Gated attention unit (GAU) over (compacted) token order.

Its attention is :func:`~smakit.modules.window_attention.local_attention`: an exact window
counted in slot order (behind :func:`smakit.sma`, the order of the routed tokens), with
rotary embeddings and a relative bias read at the *original* positions.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import default, exists
from .position import FourierRelativeBias, RelativePositionBias, _rotary_cos_sin, _rotate, rotary_frequencies
from .window_attention import ATTENTIONS, local_attention

RELATIVE_BIASES = (None, "buckets", "fourier")


class LocalGatedAttention(nn.Module):
    """Single-head gated attention unit (GAU) with an exact local window in slot order.

    From ``x [B, K, D]``: an output gate ``u = silu(x W_u)``, values ``v = silu(x W_v)`` and a
    shared ``z = silu(x W_z)`` giving ``q = z * g_q + b_q`` and ``k = z * g_k + b_k``
    (per-branch scale and offset). Queries and keys get rotary embeddings at their original
    positions and the scores a learned bias of the original distance: a log-bucketed table
    (:class:`~smakit.modules.position.RelativePositionBias`, read per query-key pair) or a
    short Fourier series (:class:`~smakit.modules.position.FourierRelativeBias`, extra
    query/key features, paid per token). The output is
    ``(u * attend(q, k, v)) W_o``.

    Works on its own (slots = positions) or behind :func:`smakit.sma`, which passes the
    compacted padding ``mask`` and original ``positions``.

    Args:
        dim (int): input/output size ``D``.
        window (int): slots each query sees (causal: the last ``window`` incl. itself;
            bidirectional: ``window`` on each side). Default: 128.
        qk_dim (int): size ``S`` of the shared query/key space (even). Default: 64.
        value_dim (int, optional): size ``E`` of values and gate. Default: ``2 * dim``.
        causal (bool): causal attention. Default: ``True``.
        attention (str): ``"softmax"`` or ``"relu2"``. Default: ``"softmax"``.
        chunked (bool): attend within fixed blocks of ``window`` slots (Mega-chunk) instead
            of a sliding window. Default: ``False``.
        rotary (bool): rotary embedding at original positions. Default: ``True``.
        relative_bias (bool or str): learned bias of the original distance: ``"buckets"`` (or
            ``True``) a log-bucketed table read per pair
            (:class:`~smakit.modules.position.RelativePositionBias`); ``"fourier"`` a short
            Fourier series carried by ``2 * num_frequencies`` extra query/key features, paid per
            token (:class:`~smakit.modules.position.FourierRelativeBias`); ``False`` none.
            Default: ``True``.
        num_buckets (int): buckets of the ``"buckets"`` bias. Default: 32.
        max_distance (int): largest distance the buckets resolve (``"fourier"``: a quarter of
            the longest period). Default: 1024.
        num_frequencies (int): frequencies of the ``"fourier"`` bias. Default: 8.
        dropout (float): dropout on the attention weights. Default: 0.0.

    Attributes:
        span (Tensor or None): 0-dim, mean over real queries of the original-position span
            of their keys (``max - min + 1``), from the last forward; behind :func:`smakit.sma`
            it lands in ``RoutingStats.span``. (``last_span`` is its deprecated name.)

    Shape:
        - x: ``[B, K, D]``; mask: ``[B, K]`` bool; positions: ``[B, K]`` int64
        - output: ``[B, K, D]``

    Examples::

        >>> gau = LocalGatedAttention(32, window=4, qk_dim=16)
        >>> gau(torch.randn(2, 10, 32)).shape
        torch.Size([2, 10, 32])
        >>> layer = sma(gau, dim=32)             # attends over the last 4 *routed* tokens
        >>> layer(torch.randn(2, 10, 32)).shape
        torch.Size([2, 10, 32])
    """

    def __init__(
        self,
        dim: int,
        window: int = 128,
        qk_dim: int = 64,
        value_dim: int | None = None,
        *,
        causal: bool = True,
        attention: str = "softmax",
        chunked: bool = False,
        rotary: bool = True,
        relative_bias: bool | str = True,
        num_buckets: int = 32,
        max_distance: int = 1024,
        num_frequencies: int = 8,
        dropout: float = 0.0,
    ):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if rotary and qk_dim % 2:
            raise ValueError(f"rotary needs an even qk_dim, got {qk_dim}")
        kind = {True: "buckets", False: None, None: None}.get(relative_bias, relative_bias)
        if kind not in RELATIVE_BIASES:
            raise ValueError(f"relative_bias must be True, False or one of {RELATIVE_BIASES[1:]}, got {relative_bias!r}")
        self.dim, self.window, self.qk_dim = dim, window, qk_dim
        self.value_dim = default(value_dim, 2 * dim)
        self.causal, self.attention, self.chunked = causal, attention, chunked
        self.dropout = dropout
        self.proj = nn.Linear(dim, 2 * self.value_dim + qk_dim)
        self.qk_scale = nn.Parameter(torch.empty(2, qk_dim))
        self.qk_offset = nn.Parameter(torch.empty(2, qk_dim))
        self.out = nn.Linear(self.value_dim, dim)
        if kind == "buckets":
            self.bias = RelativePositionBias(num_buckets, max_distance, not causal)
        elif kind == "fourier":
            self.bias = FourierRelativeBias(num_frequencies, max_distance)
        else:
            self.bias = None
        self.relative_bias = kind
        # queries and keys carry the Fourier bias's features after the qk_dim content features
        self.key_dim = qk_dim + (self.bias.dim if kind == "fourier" else 0)
        self.register_buffer("inv_freq", rotary_frequencies(qk_dim) if rotary else None, persistent=False)
        self.span: Tensor | None = None
        self.reset_parameters()

    @property
    def last_span(self) -> Tensor | None:
        """Deprecated name of ``span``."""
        warnings.warn("LocalGatedAttention.last_span is deprecated, use .span (or collect_routing_stats(model)); "
                      "removed in 0.3", FutureWarning, stacklevel=2)
        return self.span

    def reset_parameters(self) -> None:
        self.proj.reset_parameters()
        self.out.reset_parameters()
        nn.init.normal_(self.qk_scale, 1.0, 0.02)
        nn.init.zeros_(self.qk_offset)
        if exists(self.bias):
            self.bias.reset_parameters()

    def _project(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # three products from slices of one weight, not one product split: each output stays under
        # glibc's 32 MB mmap threshold at B=32, L=1K (no page faults per step) and backward needs no cat
        W, b = self.proj.weight, self.proj.bias
        E, S = self.value_dim, self.qk_dim
        u, v, z = (F.silu(F.linear(x, W[i:j], b[i:j])) for i, j in ((0, E), (E, 2 * E), (2 * E, 2 * E + S)))
        # scores are divided by sqrt(key_dim): the content part is rescaled to 1/sqrt(qk_dim)
        content = math.sqrt(self.key_dim / S)
        q = z * (self.qk_scale[0] * content) + self.qk_offset[0] * content
        k = z * self.qk_scale[1] + self.qk_offset[1]
        if exists(self.inv_freq):
            cos, sin = _rotary_cos_sin(positions, self.inv_freq, q.dtype)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if self.relative_bias == "fourier":  # <q_feat(p_q), k_feat(p_k)> = bias(p_q - p_k), unscaled
            qf = self.bias.query_features(positions).to(q.dtype) * math.sqrt(self.key_dim)
            q = torch.cat((q, qf.expand(*q.shape[:-1], -1)), dim=-1)
            k = torch.cat((k, self.bias.key_features(positions).to(k.dtype).expand(*k.shape[:-1], -1)), dim=-1)
        return u, v, q, k

    def forward(self, x: Tensor, mask: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        B, K, _ = x.shape
        # without positions the slots are the positions: rotary and the bias are then shared by all rows
        u, v, q, k = self._project(x, default(positions, torch.arange(K, device=x.device)))
        o, span = local_attention(q, k, v, self.window, causal=self.causal, mask=mask, positions=positions,
                                  bias=self.bias if self.relative_bias == "buckets" else None, attention=self.attention, chunked=self.chunked,
                                  dropout=self.dropout, training=self.training)
        real = span > 0 if mask is None else mask
        self.span = (span * real).sum() / real.sum().clamp(min=1)
        return self.out(u * o)

    # decoding
    def init_cache(self, batch_size: int, device=None, dtype=None) -> dict[str, Tensor]:
        """Empty cache of the last ``window`` routed tokens (causal only)."""
        if not self.causal:
            raise RuntimeError("decoding needs a causal LocalGatedAttention")
        device = default(device, self.proj.weight.device)
        dtype = default(dtype, self.proj.weight.dtype)
        B, w = batch_size, self.window
        return {
            "k": torch.zeros(B, w, self.key_dim, device=device, dtype=dtype),
            "v": torch.zeros(B, w, self.value_dim, device=device, dtype=dtype),
            "pos": torch.full((B, w), -1, dtype=torch.long, device=device),
            "slot": torch.full((B, w), -1, dtype=torch.long, device=device),
            "valid": torch.zeros(B, w, dtype=torch.bool, device=device),
            "count": torch.zeros(B, dtype=torch.long, device=device),
        }

    def prefill_cache(self, x: Tensor, mask: Tensor | None = None,
                      positions: Tensor | None = None) -> dict[str, Tensor]:
        """The cache after the slots of ``x`` in one pass: the last ``window`` real slots of each row.

        Args:
            x (Tensor): ``[B, K, D]`` (compacted) tokens, real slots first as :func:`smakit.compress` lays them.
            mask (Tensor, optional): ``[B, K]`` bool, True = real slot. Default: all real.
            positions (Tensor, optional): ``[B, K]`` original positions. Default: ``0..K-1``.

        Returns:
            dict: equal to :meth:`step` through the real slots from :meth:`init_cache`.
        """
        B, K, _ = x.shape
        cache = self.init_cache(B, x.device, x.dtype)
        if K == 0:
            return cache
        mask = default(mask, torch.ones(B, K, dtype=torch.bool, device=x.device))
        positions = default(positions, torch.arange(K, device=x.device).expand(B, K))
        _, v, _, k = self._project(x, positions.clamp(min=0))
        count = mask.long().sum(1)  # [B]
        slot = count.unsqueeze(1) - self.window + torch.arange(self.window, device=x.device)  # [B, w]
        valid = slot >= 0
        idx = slot.clamp(0, K - 1)

        def take(t: Tensor, fill) -> Tensor:
            g = t.gather(1, idx.view(B, -1, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]))
            return torch.where(valid.view(B, -1, *([1] * (t.dim() - 2))), g, fill)

        return {"k": take(k, 0.0).to(cache["k"].dtype), "v": take(v, 0.0).to(cache["v"].dtype),
                "pos": take(positions, -1), "slot": torch.where(valid, slot, -1), "valid": valid, "count": count}

    def step(self, x: Tensor, position: Tensor, cache: dict[str, Tensor],
             update: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Attend one new token to the cache, ``O(window)`` whatever the context length.

        Args:
            x (Tensor): ``[B, D]`` the new token.
            position (Tensor): ``[B]`` int64, its original position.
            cache (dict): from :meth:`init_cache` or a previous step.
            update (Tensor, optional): ``[B]`` bool, rows where the token is routed here
                (it joins the cache); other rows' outputs are meaningless and should be
                gated to zero. Default: all rows.

        Returns:
            ``(out [B, D], cache)``.
        """
        B = x.shape[0]
        update = default(update, torch.ones(B, dtype=torch.bool, device=x.device))
        u, v, q, k = self._project(x, position)
        slot = cache["count"]
        new = {
            "k": (cache["k"], k), "v": (cache["v"], v), "pos": (cache["pos"], position),
            "slot": (cache["slot"], slot), "valid": (cache["valid"], torch.ones_like(update)),
        }
        nxt = {}
        for name, (old, t) in new.items():
            rolled = torch.cat((old[:, 1:], t.unsqueeze(1)), dim=1)
            keep = update.view(B, *([1] * (old.dim() - 1)))
            nxt[name] = torch.where(keep, rolled, old)
        nxt["count"] = cache["count"] + update.long()
        valid = nxt["valid"]
        if self.chunked:
            valid = valid & (nxt["slot"] // self.window == (slot // self.window).unsqueeze(1))
        scores = torch.einsum("bs,bjs->bj", q, nxt["k"]) / math.sqrt(self.key_dim)
        if self.relative_bias == "buckets":
            scores = scores + self.bias(position.unsqueeze(1) - nxt["pos"]).to(scores.dtype)
        if self.attention == "softmax":
            weights = scores.masked_fill(~valid, torch.finfo(scores.dtype).min).softmax(-1) * valid
        else:
            weights = F.relu(scores).square().masked_fill(~valid, 0.0) / self.window
        o = torch.einsum("bj,bje->be", weights, nxt["v"])
        return self.out(u * o), nxt

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, window={self.window}, qk_dim={self.qk_dim}, value_dim={self.value_dim}, "
                f"causal={self.causal}, attention={self.attention!r}, chunked={self.chunked}, "
                f"relative_bias={self.relative_bias!r}")
