"""Deprecated path (removed in 0.3): :class:`SeqBoat` lives in :mod:`smakit.models.seqboat`."""

from ._moved import moved

__getattr__ = moved(__name__, dict.fromkeys(("SeqBoat", "SeqBoatLayer", "VARIANTS"), "smakit.models.seqboat"))
