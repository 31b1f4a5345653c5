"""Checkpoint files: written atomically, with a checksum of their tensors verified on load.

Loading uses ``torch.load(weights_only=True)``, so a checkpoint cannot run code; every
failure (missing, empty, not a checkpoint, corrupted) is a one-line error naming the file.
"""

from __future__ import annotations

import hashlib
import pickle
import sys
import zipfile
from pathlib import Path

import torch

from .rundir import atomic_write

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
REQUIRED = ("model", "step", "recipe")


def _tensors(obj, prefix: str = ""):
    """``(name, tensor)`` of every tensor in nested dicts / lists, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from _tensors(obj[k], f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def tensor_checksum(state: dict) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every tensor in ``state``.

    Examples::

        >>> a = {"w": torch.ones(2, 3), "step": 1}
        >>> tensor_checksum(a) == tensor_checksum({"w": torch.ones(2, 3), "step": 2})
        True
        >>> tensor_checksum(a) == tensor_checksum({"w": torch.zeros(2, 3)})
        False
    """
    h = hashlib.sha256()
    for name, t in _tensors({k: v for k, v in state.items() if k != "checksum"}):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(state: dict, path) -> None:
    """Write ``state`` plus a ``checksum`` of its tensors to ``path`` atomically.

    Args:
        state (dict): at least ``model`` (a state dict), ``step`` and ``recipe``.
        path (str or Path): the ``.pt`` file to (re)place.

    Examples::

        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.pt"
        >>> save_checkpoint({"model": {"w": torch.ones(2)}, "step": 3, "recipe": {}}, path)
        >>> load_checkpoint(path)["step"]
        3
    """
    state = {**state, "checksum": tensor_checksum(state)}
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def checkpoint_file(path) -> Path:
    """``path`` itself, or ``path/checkpoint.pt`` for a run folder; a clear error if absent."""
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / CHECKPOINT).exists():
            raise ValueError(f"no {CHECKPOINT} in {p} (is the run trained yet? or pass a .pt file)")
        return p / CHECKPOINT
    if not p.exists():
        raise ValueError(f"no such checkpoint file or run folder: {p}")
    return p


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read and verify a checkpoint (``weights_only=True``).

    Args:
        path (str or Path): a ``.pt`` file or a run folder (its ``checkpoint.pt``).
        map_location: as in :func:`torch.load`. Default: ``"cpu"``.

    Returns:
        The state dict that :func:`save_checkpoint` wrote.

    Raises:
        ValueError: missing, empty, not a smakit checkpoint, or checksum mismatch.
    """
    p = checkpoint_file(path)
    if p.stat().st_size == 0:
        raise ValueError(f"{p} is empty (0 bytes), not a checkpoint")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, KeyError,
            AttributeError, ValueError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{p} is not a smakit checkpoint (torch.load failed: {first[:200]})") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED):
        raise ValueError(f"{p} is not a smakit checkpoint (expected a dict with keys {list(REQUIRED)})")
    if "checksum" not in state:
        print(f"smakit: warning: {p} has no checksum (written by an older smakit); not verified",
              file=sys.stderr)
    elif state["checksum"] != tensor_checksum(state):
        raise ValueError(f"{p} is corrupted: its tensors do not match the checksum stored with them")
    return state
