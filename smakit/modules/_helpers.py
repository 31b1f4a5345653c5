"""Deprecated location: the helpers live in :mod:`smakit._utils`."""

from .._utils import default, exists, zero_padding  # noqa: F401
