"""Deprecated path (removed in 0.3): the baseline layers live in :mod:`smakit.models.transformer`."""

from ._moved import moved

__getattr__ = moved(__name__, dict.fromkeys(("TransformerLayer", "FeedForwardBlock"), "smakit.models.transformer"))
