"""Renamed public names keep working for one release, with a ``FutureWarning`` naming the new one."""

from __future__ import annotations

import warnings

REMOVED_IN = "0.3"


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is spelled ``new`` now (``stacklevel`` 3: the caller of the deprecated name)."""
    warnings.warn(f"{old} is renamed {new}; the old name is removed in smakit {REMOVED_IN}",
                  FutureWarning, stacklevel=stacklevel)
