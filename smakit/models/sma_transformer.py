"""Deprecated path (removed in 0.3): see :mod:`smakit.models.routed_transformers` and
:class:`smakit.modules.SelfAttention`."""

from ._moved import moved

__getattr__ = moved(__name__, {"SMATransformer": "smakit.models.routed_transformers",
                               "HybridSMA": "smakit.models.routed_transformers",
                               "SelfAttention": "smakit.modules"})
