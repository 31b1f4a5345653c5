"""Byte-level text classification from your own JSONL or CSV files.

Each record has a text and a label (field names configurable). The data is:

- one file (``.jsonl``/``.json``/``.ndjson``, ``.csv`` or ``.tsv``) whose records carry a
  ``split`` field (``train``/``val``/``test``), or, without one, a seeded held-out split of
  its records (80/10/10 by default);
- or a folder with ``train`` and ``test`` files (``train.jsonl``, ``test.csv``, ...) and an
  optional ``val`` (also ``valid``, ``validation`` or ``dev``); without one, validation is
  held out from train.

Labels are class ids (integers, also as digit strings in CSV) or names: names are mapped
to ids in sorted order over all splits, and kept in ``classes``. Texts are read as UTF-8
bytes: token ``b + 1`` for byte ``b``, 0 is padding.
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import torch

from .base import DatasetInfo, PackedSequences, check_split

SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}
VOCAB_SIZE = 257  # 256 byte values shifted by one, and the pad id 0
PAD_ID = 0


def read_records(path: str | os.PathLike) -> list[dict]:
    """The records of one JSONL (or JSON array), CSV or TSV file, as dicts.

    Examples::

        >>> import pathlib, tempfile
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "a.csv"
        >>> _ = f.write_text("text,label\\nhello,greeting\\nbye,farewell\\n")
        >>> read_records(f)
        [{'text': 'hello', 'label': 'greeting'}, {'text': 'bye', 'label': 'farewell'}]
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"data.path: {path} should end in one of {SUFFIXES}")
    with open(path, encoding="utf-8", newline="") as f:
        if suffix in (".csv", ".tsv"):
            return list(csv.DictReader(f, delimiter="," if suffix == ".csv" else "\t"))
        text = f.read()
    if text.lstrip().startswith("["):  # a JSON array rather than one object per line
        return json.loads(text)
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"data.path: {path} line {n} is not JSON ({err.msg})") from None
    return records


def split_files(folder: Path) -> dict[str, Path]:
    """``{"train", "test"[, "val"]}`` files of a folder, by their name stems."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        split = SPLIT_NAMES.get(p.stem.lower())
        if split is None or p.suffix.lower() not in SUFFIXES:
            continue
        if split in found:
            raise ValueError(f"data.path: {folder} has two {split} files, {found[split].name} and {p.name}")
        found[split] = p
    missing = [s for s in ("train", "test") if s not in found]
    if missing:
        raise ValueError(f"data.path: folder {folder} needs train and test files (e.g. train.jsonl, test.csv); "
                         f"missing {missing}")
    return found


def _holdout(n: int, fractions: tuple[float, ...], seed: int) -> list[str]:
    """A split name per record: a seeded shuffle, cut by ``fractions`` (train, val[, test])."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    names = ("train", "val", "test")[: len(fractions)]
    # every held-out share that is asked for gets at least one record (tiny files), train too
    counts = [max(1, round(n * f)) if f > 0 and n > 1 else 0 for f in fractions[1:]]
    while sum(counts) >= n and any(counts):
        counts[counts.index(max(counts))] -= 1
    out = ["train"] * n
    start = 0
    for name, count in zip(names[1:], counts):
        for i in order[start:start + count]:
            out[i] = name
        start += count
    return out


def _items(records: list, where, text_field: str, label_field: str) -> list[tuple[str, object]]:
    """``(text, raw label)`` per record, checked (record numbers count from 1 in the file)."""
    items = []
    for n, r in enumerate(records, 1):
        if not isinstance(r, dict) or text_field not in r or label_field not in r:
            fields = sorted(r) if isinstance(r, dict) else type(r).__name__
            raise ValueError(f"data.path: {where} record {n} needs fields {text_field!r} and {label_field!r} "
                             f"(set data.text_field, data.label_field); it has {fields}")
        text = r[text_field]
        if not isinstance(text, str) or not text:
            raise ValueError(f"data.path: {where} record {n}: {text_field!r} must be non-empty text")
        items.append((text, r[label_field]))
    return items


def load_splits(path, text_field="text", label_field="label", split_field="split",
                fractions=(0.8, 0.1, 0.1), seed=0) -> dict[str, list[tuple[str, object]]]:
    """``{"train", "val", "test"}`` lists of ``(text, raw label)`` from a file or folder."""
    path = Path(path)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"data.fractions must be three non-negative numbers summing to 1, got {fractions}")
    if path.is_dir():
        files = split_files(path)
        out = {s: _items(read_records(f), f, text_field, label_field) for s, f in files.items()}
        where = {s: str(f) for s, f in files.items()}
    elif path.is_file():
        records = read_records(path)
        if not records:
            raise ValueError(f"data.path: {path} holds no records")
        items = _items(records, path, text_field, label_field)
        if split_field in records[0]:
            names = []
            for n, r in enumerate(records, 1):
                name = SPLIT_NAMES.get(str(r.get(split_field, "")).lower())
                if name is None:
                    raise ValueError(f"data.path: {path} record {n} has {split_field}={r.get(split_field)!r}; "
                                     f"expected one of {sorted(SPLIT_NAMES)}")
                names.append(name)
        else:
            names = _holdout(len(items), fractions, seed)
        out = {s: [it for it, name in zip(items, names) if name == s] for s in ("train", "val", "test")}
        if not out["val"]:
            del out["val"]
        where = dict.fromkeys(("train", "val", "test"), str(path))
    else:
        raise FileNotFoundError(f"data.path: no file or folder at {path}")
    if "val" not in out:  # hold validation out of train, in the proportion of fractions
        share = fractions[1] / max(fractions[0] + fractions[1], 1e-12)
        names = _holdout(len(out["train"]), (1 - share, share), seed)
        out["val"] = [it for it, n in zip(out["train"], names) if n == "val"]
        out["train"] = [it for it, n in zip(out["train"], names) if n == "train"]
        where["val"] = where["train"]
    for split in ("test", "train", "val"):  # an empty split would score 0 loss silently
        if not out[split]:
            raise ValueError(f"data.path: no {split} records in {where[split]}"
                             + (" (and none held out of train: data.fractions)" if split == "val" else ""))
    return out


def label_ids(labels) -> tuple[list[str], dict]:
    """Class names and the ``{raw label: id}`` map: integers are ids, names are sorted.

    Examples::

        >>> label_ids(["tragedy", "comedy", "tragedy"])
        (['comedy', 'tragedy'], {'comedy': 0, 'tragedy': 1})
        >>> label_ids([2, "0", 1])
        (['0', '1', '2'], {2: 2, '0': 0, 1: 1})
    """
    labels = list(dict.fromkeys(labels))
    for lab in labels:
        if isinstance(lab, bool) or not isinstance(lab, (int, str)):
            raise ValueError(f"labels must be integers or strings, got {lab!r}")
    if all(isinstance(lab, int) or lab.strip().isdigit() for lab in labels):
        ids = {lab: int(lab) for lab in labels}
        if min(ids.values()) < 0:
            raise ValueError(f"integer labels must be >= 0, got {min(ids.values())}")
        return [str(i) for i in range(max(ids.values()) + 1)], ids
    if any(isinstance(lab, int) for lab in labels):
        raise ValueError(f"labels mix integers and names: {sorted(map(str, labels))[:6]}")
    names = sorted(labels)
    return names, {name: i for i, name in enumerate(names)}


class TextClassification(PackedSequences):
    """Labelled texts read as bytes, for classification (``data.name = "textclf"``).

    See the module docstring for the file layouts. Items have different lengths: batch them
    with :func:`smakit.data.pad_collate` (pad id 0). Every split reads the same files, so
    the label ids agree across splits.

    Args:
        split (str): ``"train"``, ``"val"`` or ``"test"``. Default: ``"train"``.
        path (str or Path): a JSONL/JSON/CSV/TSV file, or a folder of split files.
        text_field (str): field holding the text. Default: ``"text"``.
        label_field (str): field holding the label (id or name). Default: ``"label"``.
        split_field (str): field naming a record's split in a single file; files without it
            are split by ``fractions``. Default: ``"split"``.
        max_len (int): keep the first ``max_len`` bytes of each text. Default: 4096.
        fractions (tuple of 3 floats): train/val/test shares of a single file without a
            split field (a folder without val uses the train/val ratio). Default: ``(0.8, 0.1, 0.1)``.
        seed (int): seed of the held-out shuffle. Default: 0.

    Shape:
        - inputs: ``[L]`` int64, byte values + 1 (1-256), ``1 <= L <= max_len``
        - target: ``[]`` int64 class id

    Attributes:
        classes (list[str]): the class names, index = class id.
        token_shift (int): 1, added to each byte (0 is padding).
        targets (Tensor): ``[N]`` labels of the split.
        info (DatasetInfo): vocab size 257, ``len(classes)`` classes.

    Examples::

        >>> import json, pathlib, tempfile
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "reviews.jsonl"
        >>> rows = [{"text": "good film", "label": "pos", "split": "train"},
        ...         {"text": "bad film", "label": "neg", "split": "train"},
        ...         {"text": "fine", "label": "pos", "split": "test"}]
        >>> _ = f.write_text("".join(json.dumps(r) + "\\n" for r in rows))
        >>> ds = TextClassification("train", path=f)
        >>> ds.classes, len(ds), ds.info.num_classes
        (['neg', 'pos'], 1, 2)
        >>> x, y = TextClassification("test", path=f)[0]
        >>> bytes((x - 1).tolist()), int(y)
        (b'fine', 1)
    """

    def __init__(
        self,
        split: str = "train",
        path: str | os.PathLike | None = None,
        text_field: str = "text",
        label_field: str = "label",
        split_field: str = "split",
        max_len: int = 4096,
        fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        seed: int = 0,
    ):
        self.split, self.token_shift = check_split(split), 1
        if path is None:
            raise ValueError("data.path is required: a JSONL/CSV file or a folder with train/test files")
        if not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"data.max_len must be a positive integer, got {max_len!r}")
        self.path = Path(path)
        splits = load_splits(self.path, text_field, label_field, split_field, tuple(fractions), seed)
        self.classes, ids = label_ids(lab for items in splits.values() for _, lab in items)
        items = splits[split]
        encoded = [text.encode("utf-8")[:max_len] for text, _ in items]
        self._flat = torch.frombuffer(bytearray(b"".join(encoded)), dtype=torch.uint8)
        lengths = torch.tensor([len(b) for b in encoded], dtype=torch.long)
        self._offsets = torch.zeros(len(encoded) + 1, dtype=torch.long)
        self._offsets[1:] = torch.cumsum(lengths, 0)
        self.targets = torch.tensor([ids[lab] for _, lab in items], dtype=torch.long)
        self.info = DatasetInfo(name="textclf", task="classification", num_classes=len(self.classes),
                                max_len=int(lengths.max()), vocab_size=VOCAB_SIZE, pad_id=PAD_ID,
                                variable_length=True)
