"""What every smakit dataset shares: its metadata, batch padding, the cache folder."""

from __future__ import annotations

import gzip
import os
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index, used for padded LM targets


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset to be built for it.

    Args:
        name (str): registry name (``"listops"``, ``"text"``, ``"image"``, ``"audio"``).
        task (str): ``"classification"`` (one target per sequence) or ``"lm"`` (one target
            per position, next-token prediction).
        num_classes (int): classes to predict; for ``"lm"`` the output vocabulary.
        max_len (int): longest input the dataset returns.
        vocab_size (int, optional): number of token ids (pad included) when the inputs are
            ``[L]`` int64 tokens; ``None`` when they are ``[L, input_dim]`` float32.
        input_dim (int, optional): feature size of float inputs; ``None`` for tokens.
        pad_id (int): token id used for padding. Default: 0.
        variable_length (bool): whether items differ in length (then batches need the mask
            from :func:`pad_collate`). Default: ``False``.
    """

    name: str
    task: str
    num_classes: int
    max_len: int
    vocab_size: int | None = None
    input_dim: int | None = None
    pad_id: int = 0
    variable_length: bool = False

    @property
    def is_tokens(self) -> bool:
        """True when inputs are int64 token ids (embed them); False for float features."""
        return self.vocab_size is not None


def read_file_bytes(path: str | os.PathLike) -> bytes:
    """Bytes of a file, decompressed when it is gzip (``.gz``, dictzip ``.dz``) or zip.

    The format is told by the leading magic bytes, not the name. A zip archive gives its
    members concatenated in name order (``enwik8.zip`` holds one member, ``enwik8``).
    """
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"\x1f\x8b":
        with gzip.open(path, "rb") as f:
            return f.read()
    if magic == b"PK\x03\x04":
        with zipfile.ZipFile(path) as z:
            names = sorted(n for n in z.namelist() if not n.endswith("/"))
            return b"".join(z.read(n) for n in names)
    with open(path, "rb") as f:
        return f.read()


def default_cache_dir(sub: str) -> Path:
    """``$SMAKIT_CACHE/<sub>``, else ``$XDG_CACHE_HOME/smakit/<sub>``, else ``~/.cache/smakit/<sub>``."""
    root = os.environ.get("SMAKIT_CACHE")
    if root is None:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "smakit")
    return Path(root) / sub


def pad_collate(
    batch: Sequence[tuple[Tensor, Tensor | int]],
    pad_id: int = 0,
    pad_to_multiple: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Stack ``(inputs, target)`` items into a right-padded batch with a validity mask.

    Works for every smakit dataset: token inputs ``[L]`` are padded with ``pad_id``, float
    inputs ``[L, D]`` with zeros. Scalar targets are stacked to ``[B]``; sequence targets
    ``[L]`` (language modelling) are padded with ``-100`` so ``F.cross_entropy`` skips them.

    Args:
        batch (sequence of tuples): items from a dataset, as a ``DataLoader`` passes them.
        pad_id (int): id written into padded token positions. Default: 0.
        pad_to_multiple (int): round the padded length up to a multiple of this (for
            chunked layers). Default: 1.

    Shape:
        - inputs: ``[B, L]`` int64 or ``[B, L, D]`` float32, ``L`` = longest item (rounded up)
        - mask: ``[B, L]`` bool, True = real token
        - targets: ``[B]`` int64, or ``[B, L]`` int64 for sequence targets

    Examples::

        >>> items = [(torch.tensor([3, 4, 5]), 1), (torch.tensor([6]), 0)]
        >>> x, mask, y = pad_collate(items)
        >>> x.tolist(), mask.tolist(), y.tolist()
        ([[3, 4, 5], [6, 0, 0]], [[True, True, True], [True, False, False]], [1, 0])
    """
    if len(batch) == 0:
        raise ValueError("pad_collate needs at least one item")
    inputs = [item[0] for item in batch]
    targets = [torch.as_tensor(item[1]) for item in batch]
    lengths = torch.tensor([x.shape[0] for x in inputs])
    L = int(lengths.max())
    L = -(-L // pad_to_multiple) * pad_to_multiple
    first = inputs[0]
    out = first.new_full((len(batch), L) + tuple(first.shape[1:]), pad_id if not first.is_floating_point() else 0)
    for i, x in enumerate(inputs):
        out[i, : x.shape[0]] = x
    mask = torch.arange(L)[None, :] < lengths[:, None]
    if targets[0].dim() == 0:
        y = torch.stack(targets).long()
    else:
        y = torch.full((len(batch), L), IGNORE_INDEX, dtype=torch.long)
        for i, t in enumerate(targets):
            y[i, : t.shape[0]] = t
    return out, mask, y


def _targets_of(data) -> list[int]:
    if hasattr(data, "targets"):
        data = data.targets
    return torch.as_tensor(data).flatten().tolist()


def majority_baseline(train, test) -> tuple[int, float]:
    """Most frequent class in ``train`` and the accuracy of always predicting it on ``test``.

    Args:
        train: a classification dataset with a ``targets`` attribute, or its labels
            (tensor or list).
        test: the same, for the split being scored.

    Returns:
        ``(class, accuracy)``; ties go to the smaller class id.

    Examples::

        >>> majority_baseline([0, 9, 9, 1], [9, 2])
        (9, 0.5)
    """
    counts = Counter(_targets_of(train))
    if not counts:
        raise ValueError("train has no targets")
    best = max(sorted(counts), key=lambda c: counts[c])
    test_targets = _targets_of(test)
    if not test_targets:
        raise ValueError("test has no targets")
    return best, sum(t == best for t in test_targets) / len(test_targets)


def check_split(split: str, allowed: Sequence[str] = ("train", "val", "test")) -> str:
    if split not in allowed:
        raise ValueError(f"split must be one of {tuple(allowed)}, got {split!r}")
    return split


class PackedSequences(Dataset):
    """Variable-length items stored flat: item ``i`` is ``_flat[_offsets[i]:_offsets[i + 1]]``
    (plus ``token_shift``) with target ``targets[i]``. Subclasses set the three tensors."""

    token_shift = 0
    _flat: Tensor
    _offsets: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if i < 0:
            i += len(self)
        a, b = int(self._offsets[i]), int(self._offsets[i + 1])
        return self._flat[a:b].long() + self.token_shift, self.targets[i]

    def lengths(self) -> Tensor:
        """``[N]`` item lengths, for length-bucketed sampling."""
        return self._offsets[1:] - self._offsets[:-1]
