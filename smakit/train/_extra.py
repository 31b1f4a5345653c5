"""The ``train`` extra: packages a training run needs that the library itself does not."""

from __future__ import annotations

import importlib.util

TRAIN_PACKAGES = ("matplotlib", "tqdm")


class MissingExtra(ImportError):
    """A command needs an optional extra that is not installed."""


def require_train_extra(what: str) -> None:
    """Raise :class:`MissingExtra` naming the missing packages and the install command."""
    missing = [name for name in TRAIN_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtra(f"{what} needs {', '.join(missing)}: pip install 'smakit[train]'")
