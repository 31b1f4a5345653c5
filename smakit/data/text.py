"""Byte-level text for character language modelling (enwik8-style, bits per byte).

Any file or folder works. A file may be plain, gzip (``.gz``, dictzip ``.dz``) or zip; a
folder is the concatenation of its files in sorted path order. The bytes are split
contiguously 90/5/5 into train/val/test, so with enwik8 (10^8 bytes) the splits are the
standard 90M/5M/5M.

Using enwik8: download ``enwik8.zip`` yourself (http://mattmahoney.net/dc/enwik8.zip;
nothing is downloaded at run time) and pass it, zipped or unzipped::

    build_dataset("text", "train", path="/data/enwik8.zip", seq_len=1024)

Without a path the dataset reads the first text found in :data:`DEFAULT_TEXT_PATHS`
(Debian's ``dict-gcide`` dictionary, ~40 MB of English: ``apt-get install dict-gcide``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .base import DatasetInfo, check_split, read_file_bytes

DEFAULT_TEXT_PATHS = ("/usr/share/dictd/gcide.dict.dz",)
SPLIT_FRACTIONS = (0.9, 0.05, 0.05)
VOCAB_SIZE = 256


def text_files(path: str | os.PathLike, pattern: str = "*") -> list[Path]:
    """Files that make up ``path``: itself, or a folder's files (recursive, sorted, no hidden)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no text file or folder at {path}")
    files = sorted(
        p for p in path.rglob(pattern)
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise FileNotFoundError(f"no files matching {pattern!r} under {path}")
    return files


def read_text_bytes(path: str | os.PathLike, pattern: str = "*", max_bytes: int | None = None) -> Tensor:
    """All bytes of a file or folder as a ``[N]`` uint8 tensor (see :func:`text_files`).

    Args:
        path (str or Path): a file (plain, gzip or zip) or a folder.
        pattern (str): glob for a folder's files, e.g. ``"*.txt"``. Default: ``"*"``.
        max_bytes (int, optional): keep only the first ``max_bytes`` bytes. Default: all.
    """
    chunks, total = [], 0
    for f in text_files(path, pattern):
        chunks.append(read_file_bytes(f))
        total += len(chunks[-1])
        if max_bytes is not None and total >= max_bytes:
            break
    data = b"".join(chunks)[:max_bytes]
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


def split_bounds(n: int, fractions=SPLIT_FRACTIONS) -> dict[str, tuple[int, int]]:
    """Contiguous ``[start, end)`` byte ranges of train/val/test for ``n`` bytes."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    a = int(n * fractions[0])
    b = int(n * (fractions[0] + fractions[1]))
    return {"train": (0, a), "val": (a, b), "test": (b, n)}


def bits_per_byte(mean_ce_nats: float | Tensor) -> float | Tensor:
    """Bits per byte (bpc for byte-level models) from the mean cross-entropy in nats.

    Examples::

        >>> round(bits_per_byte(math.log(256)), 6)  # uniform over bytes = 8 bits
        8.0
    """
    return mean_ce_nats / math.log(2)


class ByteText(Dataset):
    """Fixed-length windows of raw bytes for next-byte prediction.

    Item ``i`` starts at byte ``t = i * stride`` of the split; its inputs are bytes
    ``[t, t + seq_len)`` and its targets bytes ``[t + 1, t + seq_len + 1)``. Every item has
    the same length, so a plain ``DataLoader`` stacks them (``pad_collate`` also works and
    gives an all-True mask). Score with :func:`bits_per_byte` of the mean cross-entropy.

    Args:
        split (str): ``"train"``, ``"val"`` or ``"test"``. Default: ``"train"``.
        path (str or Path, optional): text file or folder. Default: the first existing
            entry of :data:`DEFAULT_TEXT_PATHS`.
        seq_len (int): window length ``L``. Default: 512.
        stride (int, optional): step between window starts. Default: ``seq_len``
            (non-overlapping windows covering the split).
        pattern (str): glob for a folder's files. Default: ``"*"``.
        max_bytes (int, optional): use only the first ``max_bytes`` bytes of the text,
            before splitting (for short CPU runs). Default: all.
        fractions (tuple of 3 floats): train/val/test fractions. Default: ``(0.9, 0.05, 0.05)``.

    Shape:
        - inputs: ``[L]`` int64 byte values 0-255
        - target: ``[L]`` int64, inputs shifted left by one

    Attributes:
        data (Tensor): ``[N]`` uint8 bytes of the split.
        info (DatasetInfo): task ``"lm"``, vocab and classes 256.

    Examples::

        >>> import pathlib, tempfile
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = f.write_bytes(b"hello world, " * 100)
        >>> ds = ByteText("train", path=f, seq_len=8)
        >>> x, y = ds[0]
        >>> bytes(x.tolist()), bytes(y.tolist())
        (b'hello wo', b'ello wor')
    """

    def __init__(
        self,
        split: str = "train",
        path: str | os.PathLike | None = None,
        seq_len: int = 512,
        stride: int | None = None,
        pattern: str = "*",
        max_bytes: int | None = None,
        fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
    ):
        self.split = check_split(split)
        if path is None:
            path = next((p for p in DEFAULT_TEXT_PATHS if os.path.exists(p)), None)
            if path is None:
                raise FileNotFoundError(
                    f"no text path given and none of {DEFAULT_TEXT_PATHS} exists; pass path= "
                    "(e.g. enwik8) or install one (apt-get install dict-gcide)"
                )
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.path, self.seq_len = Path(path), seq_len
        self.stride = seq_len if stride is None else stride
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        data = read_text_bytes(path, pattern, max_bytes)
        a, b = split_bounds(data.shape[0], fractions)[split]
        self.data = data[a:b]
        self.info = DatasetInfo(name="text", task="lm", num_classes=VOCAB_SIZE, max_len=seq_len,
                                vocab_size=VOCAB_SIZE)

    def __len__(self) -> int:
        # a window needs seq_len + 1 bytes (inputs plus the last target)
        usable = self.data.shape[0] - self.seq_len - 1
        return 0 if usable < 0 else usable // self.stride + 1

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} windows")
        t = i * self.stride
        chunk = self.data[t : t + self.seq_len + 1].long()
        return chunk[:-1], chunk[1:]
