"""Datasets for the SeqBoat experiments, read from local files (nothing is downloaded).

Every dataset returns ``(inputs, target)``:

- token inputs are ``[L]`` int64 (ListOps symbols, bytes, pixels 0-255);
- continuous inputs are ``[L, 1]`` float32 (audio, pixels with ``normalize=True``);
- the target is a ``[]`` int64 class, or ``[L]`` int64 next bytes for language modelling.

:func:`pad_collate` batches any of them into ``(inputs [B, L], mask [B, L], targets)``
and each dataset's ``info`` (:class:`DatasetInfo`) tells a model what to expect.

Examples::

    >>> import tempfile
    >>> train = build_dataset("listops", "train", num_train=50, num_val=5, num_test=5,
    ...                       min_len=20, max_len=80, cache_dir=tempfile.mkdtemp())
    >>> loader = torch.utils.data.DataLoader(train, batch_size=4,
    ...                                      collate_fn=pad_collate)
    >>> x, mask, y = next(iter(loader))
    >>> x.shape[0], mask.dtype, y.shape, train.info.vocab_size
    (4, torch.bool, torch.Size([4]), 16)
"""

from __future__ import annotations

import torch  # noqa: F401  (used by the docstring example)
from torch.utils.data import Dataset

from .._deprecation import warn_renamed
from .audio import SpokenDigits, read_wav
from .base import (
    DatasetInfo,
    default_cache_dir,
    majority_baseline,
    pad_collate,
    read_file_bytes,
)
from .images import PixelSequence, read_idx
from .listops import (
    ListOps,
    detokenize,
    evaluate_listops,
    generate_listops,
    read_lra_tsv,
    tokenize,
)
from .lra import LRA_FILES, load_lra_split
from .text import ByteText, bits_per_byte, read_text_bytes
from .textclf import TextClassification, label_ids, read_records

DATASETS: dict[str, type[Dataset]] = {
    "listops": ListOps,
    "text": ByteText,
    "image": PixelSequence,
    "audio": SpokenDigits,
    "textclf": TextClassification,
}


def build_dataset(name: str, split: str = "train", **options) -> Dataset:
    """Build a registered dataset from its name and keyword options (a recipe's config).

    Args:
        name (str): one of :data:`DATASETS`: ``"listops"``, ``"text"`` (bytes),
            ``"image"`` (idx pixel sequences), ``"audio"`` (FSDD-style WAVs),
            ``"textclf"`` (labelled texts from JSONL/CSV files, as bytes).
        split (str): ``"train"``, ``"val"`` or ``"test"``. Default: ``"train"``.
        **options: keyword arguments of the dataset's class (:class:`ListOps`,
            :class:`ByteText`, :class:`PixelSequence`, :class:`SpokenDigits`,
            :class:`TextClassification`).

    Returns:
        The dataset; its ``info`` attribute is a :class:`DatasetInfo`.

    Examples::

        >>> ds = build_dataset("text", "val", path="enwik8.zip",  # doctest: +SKIP
        ...                    seq_len=1024)
        >>> ds.info.task, ds.info.vocab_size  # doctest: +SKIP
        ('lm', 256)
    """
    try:
        cls = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None
    return cls(split=split, **options)


def __getattr__(name: str):
    if name == "evaluate":  # the old name, kept for one release
        warn_renamed("smakit.data.evaluate", "smakit.data.evaluate_listops")
        return evaluate_listops
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "LRA_FILES",
    "ByteText",
    "DatasetInfo",
    "ListOps",
    "PixelSequence",
    "SpokenDigits",
    "TextClassification",
    "bits_per_byte",
    "build_dataset",
    "default_cache_dir",
    "detokenize",
    "evaluate_listops",
    "generate_listops",
    "label_ids",
    "load_lra_split",
    "majority_baseline",
    "pad_collate",
    "read_file_bytes",
    "read_idx",
    "read_lra_tsv",
    "read_records",
    "read_text_bytes",
    "read_wav",
    "tokenize",
]
