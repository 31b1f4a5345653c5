"""ListOps from the Long Range Arena release files instead of the local generator.

The LRA release (``lra_release/listops-1000/``) holds ``basic_train.tsv``,
``basic_val.tsv`` and ``basic_test.tsv``: a header ``Source<TAB>Target``, then one
expression and its value a line. Point ``data.path`` of a ListOps recipe at that folder::

    smakit train seqboat-listops --preset full --data.path /data/lra_release/listops-1000

Each file is tokenised once (about a minute for the 96k training expressions) and cached
next to the generated sets, keyed by the file's path, size and modification time.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor

from .base import default_cache_dir
from .listops import _pack, read_lra_tsv

LRA_FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}


def lra_file(folder: str | os.PathLike, split: str) -> Path:
    """The LRA file of ``split`` in ``folder`` (a one-line error when it is missing)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"data.path: {folder} is not a folder; expected the LRA ListOps folder "
                                f"holding {', '.join(LRA_FILES.values())}")
    path = folder / LRA_FILES[split]
    if not path.is_file():
        raise FileNotFoundError(f"data.path: no {LRA_FILES[split]} in {folder}; an LRA ListOps folder holds "
                                f"{', '.join(LRA_FILES.values())}")
    return path


def load_lra_split(folder: str | os.PathLike, split: str, cache_dir: str | os.PathLike | None = None
                   ) -> dict[str, Tensor]:
    """Tokens of one LRA split, packed as ``{"tokens", "offsets", "labels"}`` and cached.

    ``tokens`` is the flat ``uint8`` ids of all expressions, ``offsets`` ``[N + 1]`` their
    bounds and ``labels`` ``[N]`` their values (see :func:`smakit.data.read_lra_tsv`).
    """
    path = lra_file(folder, split).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir("listops")
    cached = cache / f"lra-{split}-{hashlib.sha1(key).hexdigest()[:16]}.pt"
    if cached.exists():
        return torch.load(cached, weights_only=True)
    tokens, labels = read_lra_tsv(path)
    if not tokens:
        raise ValueError(f"data.path: {path} holds no expressions")
    packed = _pack(tokens, labels)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    torch.save(packed, tmp)
    os.replace(tmp, cached)  # atomic: a concurrent reader never sees half a file
    return packed
