"""Build a recipe's datasets and model from its plain-dict ``[data]`` / ``[model]`` tables."""

from __future__ import annotations

import inspect
from functools import partial

from torch import nn

from ..data import DatasetInfo, build_dataset, pad_collate

SPLITS = ("train", "val", "test")
DATA_LOADING_KEYS = ("pad_to_multiple",)  # consumed by the collate function, not the dataset


def build_datasets(data_cfg: dict) -> dict:
    """``{"train", "val", "test"}`` datasets of ``data_cfg["name"]`` with its options."""
    cfg = {k: v for k, v in data_cfg.items() if k not in DATA_LOADING_KEYS}
    name = cfg.pop("name")
    return {split: build_dataset(name, split, **cfg) for split in SPLITS}


def collate_fn(info: DatasetInfo, data_cfg: dict):
    return partial(pad_collate, pad_id=info.pad_id, pad_to_multiple=data_cfg.get("pad_to_multiple", 1))


def build_model(info: DatasetInfo, model_cfg: dict) -> nn.Module:
    """The model named by ``model_cfg["arch"]`` (default ``"seqboat"``), sized for ``info``.

    ``arch = "seqboat"`` builds :class:`smakit.models.SeqBoat` (its ``variant`` key picks
    SeqBoat, SeqBoat-full, Mega-chunk or EMA-only; ``variant = "transformer"`` builds the
    baseline :class:`smakit.models.Transformer` with the same layers, so every baseline
    recipe differs from SeqBoat's in that one key); ``"sma_transformer"`` and ``"hybrid"``
    build the routed transformers of :mod:`smakit.models.routed_transformers`.
    """
    from ..models import HybridSMA, SeqBoat, SMATransformer

    cfg = dict(model_cfg)
    arch = cfg.pop("arch", "seqboat")
    io = {"n_classes": info.num_classes} if info.task == "classification" else {"lm": True}
    if info.is_tokens:
        io["vocab_size"] = info.vocab_size if info.task == "classification" else max(info.vocab_size, info.num_classes)
    else:
        io["input_dim"] = info.input_dim
        if info.task == "lm":
            io["vocab_size"] = info.num_classes
    builders = {"seqboat": SeqBoat, "sma_transformer": SMATransformer, "hybrid": HybridSMA}
    if arch not in builders:
        raise ValueError(f"model.arch must be one of {sorted(builders)}, got {arch!r}")
    if arch == "seqboat" and cfg.get("variant") == "transformer":
        return transformer_baseline(io, cfg)
    return builders[arch](**io, **cfg)


def transformer_baseline(io: dict, seqboat_cfg: dict) -> nn.Module:
    """:class:`smakit.models.Transformer` from a SeqBoat ``[model]`` table with
    ``variant = "transformer"``: the keys it shares (``dim``, ``depth``, ``heads``, ``causal``,
    ``pooling``, ``dropout``, ``tie_embeddings``; ``ffn_hidden`` and ``ffn_activation`` as
    ``mlp_hidden`` and ``mlp_activation``) and none
    of SeqBoat's own (``window``, ``qk_dim``, ...), exactly what ``SeqBoat(variant="transformer")``
    used."""
    from ..models import Transformer

    renamed = {"ffn_hidden": "mlp_hidden", "ffn_activation": "mlp_activation"}
    shared = set(inspect.signature(Transformer).parameters) - set(renamed.values())
    opts = {k: v for k, v in seqboat_cfg.items() if k in shared}
    opts |= {new: seqboat_cfg[old] for old, new in renamed.items() if seqboat_cfg.get(old) is not None}
    return Transformer(**io, **opts)
