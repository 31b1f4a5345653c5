"""Byte-level text classification from users' JSONL/CSV files, the classification report, and
the Shakespeare genre set (``benchmarks/make_genre_set.py``) trained through the CLI.

The genre-set tests read ``<repo>/../shared/data/shakespeare`` and skip when it is absent.
"""

import csv
import doctest
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from smakit.data import (
    TextClassification,
    build_dataset,
    label_ids,
    pad_collate,
    read_records,
    textclf,
)
from smakit.train import classification_report as cr
from smakit.train import load_recipe

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "shakespeare"


def load_genre_script():
    spec = importlib.util.spec_from_file_location("make_genre_set", ROOT / "benchmarks" / "make_genre_set.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, rows, fields=("text", "label")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), delimiter="," if path.suffix == ".csv" else "\t")
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.mark.parametrize("module", [textclf, cr], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


def test_jsonl_split_field_string_labels_bytes_and_truncation(tmp_path):
    rows = [{"text": "Ça va", "label": "pos", "split": "train"},
            {"text": "x" * 50, "label": "neg", "split": "train"},
            {"text": "meh", "label": "mid", "split": "validation"},
            {"text": "only in test", "label": "zzz", "split": "test"}]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    train = TextClassification("train", path=f, max_len=10)
    assert train.classes == ["mid", "neg", "pos", "zzz"]  # sorted over all splits
    assert train.info.num_classes == 4 and train.info.vocab_size == 257 and train.info.pad_id == 0
    x, y = train[0]
    assert bytes((x - 1).tolist()) == "Ça va".encode() and int(y) == 2 and x.min() >= 1
    assert train[1][0].shape == (10,) and train.info.max_len == 10  # first max_len bytes
    assert [int(y) for _, y in TextClassification("val", path=f)] == [0]
    assert [int(y) for _, y in TextClassification("test", path=f)] == [3]
    assert train.targets.tolist() == [2, 1]


def test_csv_without_split_field_is_held_out_by_fractions(tmp_path):
    rows = [{"text": f"text number {i}", "label": str(i % 3)} for i in range(50)]
    f = write_csv(tmp_path / "d.csv", rows)
    parts = {s: TextClassification(s, path=f, fractions=(0.6, 0.2, 0.2), seed=3) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [30, 10, 10]
    seen = [bytes((x - 1).tolist()).decode() for s in parts.values() for x, _ in s]
    assert sorted(seen) == sorted(r["text"] for r in rows)  # disjoint and complete
    for s in parts.values():  # digit-string labels are class ids
        assert s.classes == ["0", "1", "2"]
        assert all(int(y) == int(bytes((x - 1).tolist()).decode().split()[-1]) % 3 for x, y in s)
    again = TextClassification("test", path=f, fractions=(0.6, 0.2, 0.2), seed=3)
    assert torch.equal(again._flat, parts["test"]._flat)  # seeded
    other = TextClassification("test", path=f, fractions=(0.6, 0.2, 0.2), seed=4)
    assert not torch.equal(other._flat, parts["test"]._flat)


def test_folder_of_train_test_files_with_and_without_val(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"review": f"r{i}", "stars": i % 2} for i in range(20)])
    write_csv(folder / "test.tsv", [{"review": "t", "stars": "1"}], fields=("review", "stars"))
    kw = {"path": folder, "text_field": "review", "label_field": "stars"}
    train, val = TextClassification("train", **kw), TextClassification("val", **kw)
    assert len(train) + len(val) == 20 and len(val) == 2  # val held out of train (1:8)
    assert TextClassification("test", **kw).targets.tolist() == [1]
    write_jsonl(folder / "dev.jsonl", [{"review": "v", "stars": 0}])
    assert len(TextClassification("val", **kw)) == 1 and len(TextClassification("train", **kw)) == 20


def test_registry_and_padding(tmp_path):
    rows = [{"text": "ab" * (i + 1), "label": "a" if i % 2 else "b", "split": "train" if i < 8 else "test"}
            for i in range(10)]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    ds = build_dataset("textclf", "train", path=f, fractions=(0.5, 0.5, 0.0))
    assert len(ds) == 4 and len(build_dataset("textclf", "val", path=f, fractions=(0.5, 0.5, 0.0))) == 4
    assert ds.lengths().tolist() == [x.shape[0] for x, _ in ds] and all(x.shape[0] % 2 == 0 for x, _ in ds)
    x, mask, y = pad_collate([ds[0], ds[1]], pad_id=ds.info.pad_id)
    assert mask.sum().item() == ds[0][0].shape[0] + ds[1][0].shape[0] and (x[~mask] == 0).all()
    assert y.tolist() == [int(ds[0][1]), int(ds[1][1])]


@pytest.mark.parametrize("case, match", [
    ("missing_field", r"record 2 needs fields 'text' and 'label'.*\['label', 'txt'\]"),
    ("empty_text", "record 1: 'text' must be non-empty"),
    ("mixed_labels", "labels mix integers and names"),
    ("float_label", "labels must be integers or strings"),
    ("bad_split", "record 1 has split='holdout'"),
    ("bad_json", "line 2 is not JSON"),
    ("suffix", r"should end in one of"),
    ("no_test", "no test records"),
    ("no_val", "no val records.*data.fractions"),
    ("empty", "holds no records"),
])
def test_bad_files_give_one_line_errors(tmp_path, case, match):
    rows = {"missing_field": [{"text": "a", "label": 1}, {"txt": "b", "label": 0}],
            "empty_text": [{"text": "", "label": 1}],
            "mixed_labels": [{"text": "a", "label": 1, "split": "train"}, {"text": "b", "label": "x", "split": "val"},
                             {"text": "c", "label": 1, "split": "test"}],
            "float_label": [{"text": "a", "label": 0.5, "split": "train"}, {"text": "b", "label": 1, "split": "val"},
                            {"text": "c", "label": 1, "split": "test"}],
            "bad_split": [{"text": "a", "label": 1, "split": "holdout"}],
            "no_test": [{"text": "a", "label": 1, "split": "train"}],
            "no_val": [{"text": "a", "label": 1, "split": "train"}, {"text": "b", "label": 1, "split": "test"}],
            "empty": []}.get(case, [{"text": "a", "label": 1}])
    f = write_jsonl(tmp_path / ("d.txt" if case == "suffix" else "d.jsonl"), rows)
    if case == "bad_json":
        f.write_text('{"text": "a", "label": 1}\n{"text": oops}\n')
    with pytest.raises(ValueError, match=match) as err:
        TextClassification("train", path=f)
    assert "\n" not in str(err.value)


def test_missing_paths(tmp_path):
    with pytest.raises(ValueError, match="data.path is required"):
        TextClassification("train")
    with pytest.raises(FileNotFoundError, match="no file or folder"):
        TextClassification("train", path=tmp_path / "nope.jsonl")
    (tmp_path / "train.csv").write_text("text,label\na,1\n")
    with pytest.raises(ValueError, match=r"needs train and test files.*\['test'\]"):
        TextClassification("train", path=tmp_path)


def test_cli_without_data_path_is_a_one_line_error(tmp_path, capsys):
    from smakit.cli import main

    assert main(["train", "seqboat-textclf", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "data.path is required" in err and "\n" not in err and not (tmp_path / "run").exists()


def test_read_records_json_array_and_label_ids(tmp_path):
    f = tmp_path / "a.json"
    f.write_text(json.dumps([{"text": "a", "label": 2}]))
    assert read_records(f) == [{"text": "a", "label": 2}]
    assert label_ids([3, 1]) == (["0", "1", "2", "3"], {3: 3, 1: 1})
    with pytest.raises(ValueError, match=">= 0"):
        label_ids([-1, 2])


# ---------------------------------------------------------------- report


def test_confusion_matrix_and_report_match_a_plain_count():
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 4, (200,), generator=g)
    preds = torch.where(torch.rand(200, generator=g) < 0.6, targets, torch.randint(0, 4, (200,), generator=g))
    conf = cr.confusion_matrix(preds, targets, 4)
    expected = torch.zeros(4, 4, dtype=torch.long)
    for t, p in zip(targets.tolist(), preds.tolist()):
        expected[t, p] += 1
    assert torch.equal(conf, expected)
    report = cr.report_from_confusion(conf, list("abcd"), majority_class=1)
    assert report["accuracy"] == pytest.approx((preds == targets).float().mean().item())
    for i, name in enumerate("abcd"):
        sel = targets == i
        assert report["per_class_accuracy"][name] == pytest.approx((preds[sel] == i).float().mean().item())
    assert report["majority_accuracy"] == pytest.approx((targets == 1).float().mean().item())
    empty = cr.report_from_confusion(cr.confusion_matrix(torch.tensor([0]), torch.tensor([0]), 2), ["x", "y"], 0)
    assert empty["per_class_accuracy"]["y"] is None and "y - (0)" in cr.format_report(empty)
    with pytest.raises(ValueError, match="same shape"):
        cr.confusion_matrix(preds[:3], targets, 4)


def test_report_plot_is_written(tmp_path):
    conf = cr.confusion_matrix(torch.tensor([0, 1, 2, 2, 1]), torch.tensor([0, 1, 2, 1, 1]), 3)
    png = cr.plot_report(cr.report_from_confusion(conf, ["comedy", "history", "tragedy"], 1), tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- Shakespeare genres


def need_shakespeare() -> Path:
    if not SHAKESPEARE.is_dir():
        pytest.skip(f"{SHAKESPEARE} not found (the shared data folder beside the repository)")
    return SHAKESPEARE


def test_genre_set_covers_the_folio_and_splits_by_play():
    src = need_shakespeare()
    m = load_genre_script()
    plays = [p for ps in m.GENRES.values() for p in ps]
    assert len(plays) == len(set(plays)) == 36  # the First Folio's plays
    assert [len(m.GENRES[g]) for g in ("comedy", "history", "tragedy")] == [14, 10, 12]
    assert {p.name[:-8] for p in src.glob("*_gut.txt")} - set(plays) == {
        "pericles", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "sonnets"}
    records = m.build_records(src, max_per_play=3)
    by_play = {}
    for r in records:
        by_play.setdefault(r["play"], set()).add(r["split"])
        assert 1024 <= len(r["text"].encode()) <= 4096 and r["text"].strip()
    assert all(len(s) == 1 for s in by_play.values()) and len(by_play) == 36  # one split per play
    splits = [s.pop() for s in by_play.values()]
    assert splits.count("test") == 8 and splits.count("val") == 5
    full = m.passages(m.play_body((src / "hamlet_gut.txt").read_text()), __import__("random").Random(0))
    joined = "".join(full)
    assert "Dramatis" not in joined and "PERSONS REPRESENTED" not in joined and "Who's there?" in joined


def test_textclf_recipe_trains_on_the_genre_set_through_the_cli(tmp_path):
    m = load_genre_script()
    data = m.write_jsonl(m.build_records(need_shakespeare(), max_per_play=4), tmp_path / "genre.jsonl")
    out = tmp_path / "run"
    small = ["--max-steps", "4", "--eval-every", "4", "--warmup-steps", "2", "--batch-size", "8", "--data.max_len", "64",
             "--model.dim", "16", "--model.depth", "1", "--model.qk_dim", "8", "--model.value_dim", "16",
             "--model.window", "16"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "smakit.cli", "train", "seqboat-textclf", "--data.path", str(data),
                           "--out", str(out), "--no-progress", *small], env=env, capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "majority-class baseline" in proc.stdout and "per-class accuracy (examples): comedy" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    report = summary["classification"]
    assert report["classes"] == ["comedy", "history", "tragedy"]
    assert report["accuracy"] == pytest.approx(summary["test"]["accuracy"])  # same predictions as the eval loop
    assert report["majority_accuracy"] == pytest.approx(summary["majority_accuracy"])
    assert sum(report["support"].values()) == 8 * 4  # 8 test plays, 4 passages each
    assert (out / "confusion_matrix.png").stat().st_size > 0


@pytest.mark.parametrize("name", ["seqboat-textclf", "transformer-textclf", "ema-only-textclf", "seqboat-full-textclf"])
def test_textclf_recipes_share_data_and_training(name):
    base, recipe = load_recipe("seqboat-textclf"), load_recipe(name)
    assert recipe.data == base.data and recipe.train == base.train and recipe.data["name"] == "textclf"
