"""Raw-waveform digit classification from a folder of WAV files named like FSDD.

The Free Spoken Digit Dataset (FSDD) names its files ``{digit}_{speaker}_{index}.wav``
(8 kHz, mono, 16-bit). Any folder of WAVs with such names works; the label is the digit.
Nothing is downloaded: clone FSDD (its ``recordings/`` folder) and pass ``root``.

Splits:

- ``split_by="index"`` (FSDD's own): takes with index 0-4 of every speaker and digit are
  the test set. We hold out indices 5-9 as validation (``num_val_index=5``), the rest
  (10-49) train; ``num_val_index=0`` gives FSDD's official train set (5-49) and no val.
- ``split_by="speaker"`` (speaker-disjoint, our convention; FSDD defines none): speakers
  sorted by name, the last is test and the one before it val, unless ``test_speakers``
  / ``val_speakers`` say otherwise. For FSDD's six speakers: test ``yweweler``, val
  ``theo``, train ``george``, ``jackson``, ``lucas``, ``nicolas``.
"""

from __future__ import annotations

import os
import re
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .base import DatasetInfo, check_split

FSDD_NAME = re.compile(r"^(\d)_([^_]+)_(\d+)\.wav$", re.IGNORECASE)
SAMPLE_RATE = 8000


def read_wav(path: str | os.PathLike) -> tuple[Tensor, int]:
    """Read a PCM WAV file as float32 samples in ``[-1, 1]``, channels averaged.

    Supports 8-bit (unsigned), 16-bit and 32-bit integer PCM.

    Args:
        path (str or Path): the file.

    Returns:
        ``(samples [N] float32, sample_rate)``.
    """
    with wave.open(str(path), "rb") as w:
        width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width in (2, 4):
        dtype = np.dtype("<i2" if width == 2 else "<i4")
        x = np.frombuffer(raw, dtype=dtype).astype(np.float32) / float(2 ** (8 * width - 1))
    else:
        raise ValueError(f"{path}: {8 * width}-bit PCM is not supported (8, 16 or 32 only)")
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    return torch.from_numpy(np.ascontiguousarray(x)), rate


def list_recordings(root: str | os.PathLike) -> list[tuple[Path, int, str, int]]:
    """``(path, digit, speaker, index)`` of every FSDD-named WAV in ``root`` (or ``root/recordings``), sorted."""
    root = Path(root)
    if (root / "recordings").is_dir():
        root = root / "recordings"
    if not root.is_dir():
        raise FileNotFoundError(f"no recordings folder at {root}")
    found = []
    for p in sorted(root.iterdir()):
        m = FSDD_NAME.match(p.name)
        if m and p.is_file():
            found.append((p, int(m.group(1)), m.group(2), int(m.group(3))))
    if not found:
        raise FileNotFoundError(f"no files named like {{digit}}_{{speaker}}_{{index}}.wav in {root}")
    return found


def _default_root() -> Path:
    if "SMAKIT_DATA" in os.environ:
        return Path(os.environ["SMAKIT_DATA"]) / "fsdd"
    raise FileNotFoundError("pass root= (a clone of FSDD or its recordings/ folder), or set SMAKIT_DATA")


def fit_length(x: Tensor, length: int) -> Tensor:
    """Keep the first ``length`` samples, zero-padding at the end when shorter."""
    if x.shape[0] >= length:
        return x[:length]
    return torch.cat([x, x.new_zeros(length - x.shape[0])])


class SpokenDigits(Dataset):
    """Spoken digit classification from raw waveforms (FSDD; a stand-in for SC10).

    Each recording is read as float32 in ``[-1, 1]`` and padded (zeros at the end) or
    cropped (the start is kept) to ``length`` samples. With ``length=None`` items keep
    their own length; :func:`smakit.data.pad_collate` then pads and masks batches.

    Args:
        split (str): ``"train"``, ``"val"`` or ``"test"``. Default: ``"train"``.
        root (str or Path, optional): the FSDD folder or its ``recordings/`` folder.
            Default: ``$SMAKIT_DATA/fsdd``.
        length (int, optional): samples per item. Default: 16000.
        split_by (str): ``"index"`` (FSDD's split) or ``"speaker"`` (speaker-disjoint);
            see the module docstring. Default: ``"index"``.
        num_val_index (int): with ``split_by="index"``, indices ``5 .. 5 + num_val_index - 1``
            form the val set. Default: 5.
        test_speakers (sequence of str, optional): with ``split_by="speaker"``, the test
            speakers. Default: the last speaker by name.
        val_speakers (sequence of str, optional): the val speakers. Default: the last
            speaker by name that is not a test speaker.

    Shape:
        - inputs: ``[L, 1]`` float32, ``L = length``
        - target: ``[]`` int64 digit 0-9

    Attributes:
        targets (Tensor): ``[N]`` digits.
        speakers (list of str): the speaker of each item.
        info (DatasetInfo): ``input_dim`` 1, 10 classes.

    Examples::

        >>> ds = SpokenDigits("test", root="free-spoken-digit-dataset")  # doctest: +SKIP
        >>> x, y = ds[0]  # doctest: +SKIP
        >>> x.shape, x.dtype  # doctest: +SKIP
        (torch.Size([16000, 1]), torch.float32)
    """

    def __init__(
        self,
        split: str = "train",
        root: str | os.PathLike | None = None,
        length: int | None = 16000,
        split_by: str = "index",
        num_val_index: int = 5,
        test_speakers: Sequence[str] | None = None,
        val_speakers: Sequence[str] | None = None,
    ):
        self.split = check_split(split)
        self.root = Path(root) if root is not None else _default_root()
        records = list_recordings(self.root)
        if split_by == "index":
            keep = [r for r in records if self._index_split(r[3], num_val_index) == split]
        elif split_by == "speaker":
            test_set, val_set = self._speaker_sets(sorted({r[2] for r in records}), test_speakers, val_speakers)
            which = {s: "test" for s in test_set} | {s: "val" for s in val_set}
            keep = [r for r in records if which.get(r[2], "train") == split]
        else:
            raise ValueError(f"split_by must be 'index' or 'speaker', got {split_by!r}")
        if not keep:
            raise ValueError(f"split {split!r} (split_by={split_by!r}) is empty in {self.root}")
        self.length = length
        self.waves: list[Tensor] = []
        for path, *_ in keep:
            x, rate = read_wav(path)
            if rate != SAMPLE_RATE:
                raise ValueError(f"{path}: sample rate {rate}, expected {SAMPLE_RATE} (no resampling)")
            self.waves.append(x)
        self.targets = torch.tensor([r[1] for r in keep], dtype=torch.long)
        self.speakers = [r[2] for r in keep]
        max_len = length if length is not None else max(x.shape[0] for x in self.waves)
        self.info = DatasetInfo(name="audio", task="classification", num_classes=10, max_len=max_len,
                                input_dim=1, variable_length=length is None)

    @staticmethod
    def _index_split(index: int, num_val_index: int) -> str:
        if index < 5:
            return "test"
        return "val" if index < 5 + num_val_index else "train"

    @staticmethod
    def _speaker_sets(speakers, test_speakers, val_speakers) -> tuple[set[str], set[str]]:
        if test_speakers is None:
            test_speakers = speakers[-1:]
        if val_speakers is None:
            rest = [s for s in speakers if s not in set(test_speakers)]
            val_speakers = rest[-1:] if len(rest) > 1 else []
        unknown = (set(test_speakers) | set(val_speakers)) - set(speakers)
        if unknown:
            raise ValueError(f"unknown speakers {sorted(unknown)}; the folder has {speakers}")
        if set(test_speakers) & set(val_speakers):
            raise ValueError("test_speakers and val_speakers overlap")
        return set(test_speakers), set(val_speakers)

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = self.waves[i]
        if self.length is not None:
            x = fit_length(x, self.length)
        return x.unsqueeze(-1), self.targets[i]
