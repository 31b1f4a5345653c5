"""Put SMA into an existing model: :func:`sma_wrap` replaces submodules chosen by name pattern.

Two kinds of submodule, told apart by ``residual``:

* ``residual="outside"`` (default): the model adds the residual around the submodule, as a
  pre-norm transformer does around its MLP (GPT-2: ``x + mlp(ln_2(x))``). The adapter returns
  ``gate * f(x)`` at routed tokens and exact zeros elsewhere, so the model's own residual
  carries skipped tokens through unchanged.
* ``residual="inside"``: the submodule returns ``x + f(x)`` itself (a whole
  :class:`torch.nn.TransformerEncoderLayer`, a Mixture-of-Depths block). The adapter returns
  ``x + gate * (block(x) - x)`` at routed tokens and ``x`` elsewhere.

An :class:`~torch.nn.TransformerEncoderLayer` runs its attention among the routed tokens
only, with the padding mask, ``src_mask`` and ``is_causal`` rebuilt for the compacted
sequence from the original positions.

With the default causal :class:`~smakit.routing.ThresholdRouter` each token decides from its
own features, so KV-cached decoding (one token at a time, ``L = 1``) routes exactly as the
full forward does. ``router="topk"`` is not causal; for a decoder pass
``causal_predictor=True`` (see :class:`~smakit.TopKRouter`): training routes by top-k, eval
and ``generate()`` by the learned causal predictor, so cached equals uncached decoding.
"""

from __future__ import annotations

import re
import warnings

import torch
from torch import Tensor, nn

from .sma import SparseModularActivation

RESIDUAL_MODES = ("outside", "inside")


# helpers

def _pattern_regex(pattern: str) -> re.Pattern:
    """``*`` matches one dotted name segment, ``**`` any number of them."""
    parts = re.split(r"(\*\*|\*)", pattern)
    body = "".join(".*" if p == "**" else "[^.]*" if p == "*" else re.escape(p) for p in parts)
    return re.compile(body + r"\Z")


def infer_dim(module: nn.Module) -> int:
    """Feature size a submodule reads: an encoder layer's ``embed_dim``, else the input size of
    its first ``nn.Linear`` (``in_features``) or Hugging Face ``Conv1D`` (``nx``)."""
    if isinstance(module, nn.TransformerEncoderLayer):
        return module.self_attn.embed_dim
    for m in module.modules():
        for attr in ("in_features", "nx", "embed_dim"):
            value = getattr(m, attr, None)
            if isinstance(value, int):
                return value
    raise ValueError(f"cannot infer the feature size of {type(module).__name__}; pass dim=")


class _Delta(nn.Module):
    """``module(x) - x``: the update of a block that adds its own residual."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x) - x


class _EncoderLayerOnTokens(nn.Module):
    """Run a :class:`~torch.nn.TransformerEncoderLayer` on compacted tokens; returns its update.

    The attention mask of the compacted sequence is rebuilt from the original one: slot ``i``
    may attend to slot ``j`` when the original mask allowed ``positions[i] -> positions[j]``
    and slot ``j`` is real. A padding slot attends to itself only (no empty softmax rows).
    """

    def __init__(self, layer: nn.TransformerEncoderLayer):
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor, mask: Tensor, positions: Tensor, attn_bias: Tensor | None = None,
                causal: Tensor | None = None) -> Tensor:
        B, K = mask.shape
        pos = positions.clamp(min=0)
        if attn_bias is None:  # [B, K, L] rows of the original mask, compacted
            bias = torch.zeros(B, K, K, dtype=torch.float32, device=x.device)
        else:
            bias = attn_bias.float().gather(2, pos.unsqueeze(1).expand(B, K, K))
        allowed = mask.unsqueeze(1).expand(B, K, K)
        if causal is not None:  # [B, K] any nonzero: causal order on original positions
            allowed = allowed & (pos.unsqueeze(2) >= pos.unsqueeze(1))
        eye = torch.eye(K, dtype=torch.bool, device=x.device)
        allowed = allowed | (eye & ~mask.unsqueeze(2))
        bias = bias.masked_fill(~allowed, float("-inf"))
        bias = bias.repeat_interleave(self.layer.self_attn.num_heads, 0).to(x.dtype)  # [B*H, K, K]
        batch_first = self.layer.self_attn.batch_first
        src = x if batch_first else x.transpose(0, 1)
        y = self.layer(src, src_mask=bias)
        y = y if batch_first else y.transpose(0, 1)
        return y - x


class SMAAdapter(nn.Module):
    """A drop-in replacement for a submodule that runs it only on routed tokens.

    Built by :func:`sma_wrap`. It is called like the submodule it replaces, with hidden
    states ``[B, L, D]`` (``[L, D]`` is taken as one row); the routed submodule is
    ``adapter.sma.module``.

    Args:
        module (nn.Module): the submodule to route to.
        dim (int): its input feature size ``D``.
        residual (str): ``"outside"`` (the model adds the residual; return ``gate * f(x)``) or
            ``"inside"`` (the submodule returns ``x + f(x)``; return
            ``x + gate * (f(x) - x)``). Default: ``"outside"``.
        **sma_options: options of :class:`~smakit.SparseModularActivation` (``router``,
            ``capacity``, ``layout``, ``density_target``, ...).

    Attributes:
        sma (SparseModularActivation): the router and the routed submodule; its ``stats`` and
            ``aux_loss`` describe the last forward (and :func:`smakit.aux_losses` finds it).

    Shape:
        - x: ``[B, L, D]`` (``[L, B, D]`` for an encoder layer with ``batch_first=False``)
        - output: same as the submodule's
    """

    def __init__(self, module: nn.Module, dim: int, residual: str = "outside", **sma_options):
        super().__init__()
        if residual not in RESIDUAL_MODES:
            raise ValueError(f"residual must be one of {RESIDUAL_MODES}, got {residual!r}")
        self.residual = residual
        self.is_encoder_layer = isinstance(module, nn.TransformerEncoderLayer)
        if self.is_encoder_layer:
            if residual != "inside":
                raise ValueError("an nn.TransformerEncoderLayer adds its own residual: use residual='inside'")
            if sma_options.get("layout", "padded") != "padded":
                raise ValueError("an nn.TransformerEncoderLayer needs layout='padded' (its attention reads the mask)")
            inner = _EncoderLayerOnTokens(module)
        else:
            inner = _Delta(module) if residual == "inside" else module
        self.sma = SparseModularActivation(inner, dim, **sma_options)

    @property
    def wrapped(self) -> nn.Module:
        """The original submodule."""
        inner = self.sma.module
        return inner.layer if self.is_encoder_layer else inner.module if self.residual == "inside" else inner

    @property
    def self_attn(self) -> nn.Module:
        """The wrapped encoder layer's attention (``nn.TransformerEncoder`` reads it)."""
        if not self.is_encoder_layer:
            raise AttributeError("self_attn exists only on an adapter around an nn.TransformerEncoderLayer")
        return self.wrapped.self_attn

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        if self.is_encoder_layer:
            return self._encoder_layer_forward(x, *args, **kwargs)
        if args or kwargs:
            raise TypeError(
                f"SMAAdapter around {type(self.wrapped).__name__} passes only the hidden states; "
                f"it was called with {len(args)} more positional and keyword arguments {sorted(kwargs)}"
            )
        if not isinstance(x, Tensor) or x.dim() not in (2, 3):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape [B, L, {self.sma.dim}] or [L, {self.sma.dim}], got {shape}")
        x3 = x.unsqueeze(0) if x.dim() == 2 else x
        y = self.sma(x3).to(x.dtype)
        if self.residual == "inside":
            y = x3 + y
        return y.squeeze(0) if x.dim() == 2 else y

    def _encoder_layer_forward(self, src: Tensor, src_mask: Tensor | None = None,
                               src_key_padding_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        batch_first = self.wrapped.self_attn.batch_first
        if not isinstance(src, Tensor) or src.dim() != 3:
            shape = tuple(src.shape) if isinstance(src, Tensor) else type(src).__name__
            raise ValueError(f"src must have shape [B, L, {self.sma.dim}] (batched), got {shape}")
        x = src if batch_first else src.transpose(0, 1)
        B, L = x.shape[:2]
        mask = None  # True = real token; the key padding mask is True (or -inf) at padding
        if src_key_padding_mask is not None:
            kpm = src_key_padding_mask
            mask = ~torch.isneginf(kpm) if kpm.is_floating_point() else ~kpm.bool()
        extra = {}
        if src_mask is not None:
            if src_mask.dim() != 2 or tuple(src_mask.shape) != (L, L):
                raise ValueError(f"src_mask must have shape [L, L] = {(L, L)}, got {tuple(src_mask.shape)}")
            bias = src_mask.float() if src_mask.is_floating_point() else \
                torch.zeros(L, L, device=src.device).masked_fill(src_mask, float("-inf"))
            extra["attn_bias"] = bias.expand(B, L, L)
        elif is_causal:
            extra["causal"] = torch.ones(B, L, dtype=torch.bool, device=src.device)
        y = x + self.sma(x, mask, **extra).to(x.dtype)
        return y if batch_first else y.transpose(0, 1)

    def extra_repr(self) -> str:
        return f"residual={self.residual!r}"


def sma_wrap(model: nn.Module, pattern: str | list[str], *, dim: int | None = None,
             residual: str = "outside", **sma_options) -> list[str]:
    """Replace every submodule of ``model`` whose name matches ``pattern`` by an :class:`SMAAdapter`.

    Names are the dotted names of ``model.named_modules()``; in a pattern ``*`` matches one
    name segment and ``**`` any number (``"transformer.h.*.mlp"`` is every GPT-2 block's MLP,
    ``"layers.*"`` every layer of an ``nn.TransformerEncoder``). A match inside an already
    matched submodule is left alone. The model is changed in place; load pretrained weights
    before wrapping (the wrapped parameters move under ``<name>.sma.routed_modules.0``).

    Args:
        model (nn.Module): the model to change in place.
        pattern (str or list[str]): name pattern(s) of the submodules to wrap.
        dim (int, optional): feature size of the wrapped submodules. Default: inferred from
            each one (see :func:`infer_dim`).
        residual (str): ``"outside"`` when the model adds the residual around the submodule
            (an MLP), ``"inside"`` when the submodule adds it (a whole layer). An
            ``nn.TransformerEncoderLayer`` is always ``"inside"``. Default: ``"outside"``.
        **sma_options: options of :class:`~smakit.SparseModularActivation`, e.g.
            ``router="threshold"``, ``density_target=0.5``, ``layout="flat"``.

    Returns:
        list[str]: the names of the wrapped submodules.

    Examples::

        >>> layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        >>> enc = nn.TransformerEncoder(layer, 2)
        >>> sma_wrap(enc, "layers.*", residual="inside")
        ['layers.0', 'layers.1']
        >>> enc(torch.randn(2, 10, 32)).shape
        torch.Size([2, 10, 32])
    """
    _warn_if_not_causal(model, sma_options)
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise TypeError(f"pattern must be a non-empty str or list of str, got {pattern!r}")
    regexes = [_pattern_regex(p) for p in patterns]
    names = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(done + ".") for done in names):
            continue
        if any(r.match(name) for r in regexes):
            if isinstance(module, SMAAdapter):
                raise ValueError(f"{name} is already wrapped")
            names.append(name)
    if not names:
        some = [n for n, _ in model.named_modules() if n][:8]
        raise ValueError(f"pattern {pattern!r} matched no submodule; names look like {some}")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        module = parent.get_submodule(child)
        mode = "inside" if isinstance(module, nn.TransformerEncoderLayer) else residual
        adapter = SMAAdapter(module, infer_dim(module) if dim is None else dim, residual=mode, **sma_options)
        adapter.train(module.training)  # a model wrapped in eval mode stays in eval mode
        setattr(parent, child, adapter)
    return names


def _warn_if_not_causal(model: nn.Module, options: dict) -> None:
    """Top-k routing without its causal predictor in a model that generates would read the future."""
    router = options.get("router", "threshold")
    if router != "topk" or options.get("causal_predictor", False):
        return
    can_generate = getattr(model, "can_generate", None)
    config = getattr(model, "config", None)
    if (callable(can_generate) and can_generate()) or getattr(config, "is_decoder", False):
        warnings.warn("router='topk' is not causal (a token's routing depends on later tokens), so this decoder "
                      "would read the future and generate() would route differently from the forward; pass "
                      "causal_predictor=True", UserWarning, stacklevel=3)


__all__ = ["SMAAdapter", "infer_dim", "sma_wrap"]
