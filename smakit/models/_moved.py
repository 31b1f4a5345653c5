"""Deprecated module paths of smakit.models (removed in 0.3): each name now lives elsewhere."""

from __future__ import annotations

import importlib
import warnings


def moved(old: str, names: dict[str, str]):
    """A module ``__getattr__`` that finds ``names[name]`` (a module path) and warns once per use."""

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(f"{old}.{name} moved to {names[name]}.{name}; the old path will be removed in 0.3",
                      FutureWarning, stacklevel=2)
        return getattr(importlib.import_module(names[name]), name)

    return __getattr__
