"""ListOps read from Long Range Arena release files (``basic_{train,val,test}.tsv``)."""

import os

import pytest
import torch

from smakit.data import (
    ListOps,
    evaluate_listops,
    generate_listops,
    listops,
    load_lra_split,
    lra,
    read_lra_tsv,
)
from smakit.train import load_recipe, run


def lra_text(ids: list[int]) -> str:
    """An expression written the LRA way: every argument of an operator wrapped in ( )."""
    words = [listops.VOCAB[i] for i in ids]
    out, depth = [], 0
    for w in words:
        if w == "]":
            out.append("]")
            depth -= 1
        elif depth > 0:
            out += ["(", w, ")"] if w.isdigit() else ["(", w]
        else:
            out.append(w)
        if w.startswith("["):
            depth += 1
    return " ".join(out)


def write_lra_folder(folder, sizes=(40, 8, 8), seed=0):
    """The three LRA files with generated expressions; returns ``{split: (tokens, labels)}``."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens, labels = generate_listops(sum(sizes), min_len=10, max_len=60, seed=seed)
    out, start = {}, 0
    for split, n in zip(("train", "val", "test"), sizes):
        part = (tokens[start:start + n], labels[start:start + n])
        lines = ["Source\tTarget"] + [f"{lra_text(t)}\t{y}" for t, y in zip(*part)]
        (folder / lra.LRA_FILES[split]).write_text("\n".join(lines) + "\n")
        out[split], start = part, start + n
    return out


def test_lra_text_reads_back_to_the_same_ids():
    tokens, _ = generate_listops(5, min_len=10, max_len=40, seed=2)
    for t in tokens:
        text = lra_text(t)
        assert "(" in text and listops.tokenize(text) == t


def test_listops_from_lra_files_matches_the_files(tmp_path):
    written = write_lra_folder(tmp_path / "listops-1000")
    for split, (tokens, labels) in written.items():
        ds = ListOps(split, path=tmp_path / "listops-1000", cache_dir=tmp_path / "cache")
        assert len(ds) == len(labels) and ds.targets.tolist() == labels
        assert [ds[i][0].tolist() for i in range(len(ds))] == tokens
        assert all(evaluate_listops(x) == int(y) for x, y in ds)
        assert ds.info.max_len == max(map(len, tokens)) and ds.info.num_classes == 10
    assert len(list((tmp_path / "cache").glob("lra-*.pt"))) == 3


def test_cache_is_reused_and_refreshed_when_the_file_changes(tmp_path):
    folder = tmp_path / "lra"
    write_lra_folder(folder)
    first = load_lra_split(folder, "test", tmp_path / "cache")
    (cached,) = (tmp_path / "cache").glob("lra-test-*.pt")
    torch.save({**first, "labels": first["labels"] * 0}, cached)  # poison: a reuse shows up
    assert load_lra_split(folder, "test", tmp_path / "cache")["labels"].sum() == 0
    write_lra_folder(folder, seed=5)  # new content, new size or time: read again
    path = folder / lra.LRA_FILES["test"]
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    fresh = load_lra_split(folder, "test", tmp_path / "cache")
    assert fresh["labels"].tolist() == read_lra_tsv(path)[1]


@pytest.mark.parametrize("line, match", [
    ("[MAX 1 2 ]\t12", "line 2: label must be a digit"),
    ("[MAX 1 2 ]", "line 2: expected 'expression<TAB>label', got 1 fields"),
    ("[MAX 1 [FOO 2 ] ]\t1", "line 2: unknown ListOps token '\\[FOO'"),
    ("( )\t1", "line 2: empty expression"),
])
def test_bad_lines_name_the_file_and_line(tmp_path, line, match):
    f = tmp_path / "basic_train.tsv"
    f.write_text(f"Source\tTarget\n{line}\n")
    with pytest.raises(ValueError, match=match):
        read_lra_tsv(f)


def test_missing_folder_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        ListOps("train", path=tmp_path / "nope", cache_dir=tmp_path)
    (tmp_path / "basic_train.tsv").write_text("Source\tTarget\n[MAX 1 2 ]\t2\n")
    ListOps("train", path=tmp_path, cache_dir=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="no basic_val.tsv in"):
        ListOps("val", path=tmp_path, cache_dir=tmp_path / "c")


def test_listops_recipe_trains_on_lra_files_by_data_path(tmp_path, monkeypatch):
    monkeypatch.setenv("SMAKIT_CACHE", str(tmp_path / "cache"))
    write_lra_folder(tmp_path / "lra", sizes=(32, 8, 8))
    tiny = {"data.path": str(tmp_path / "lra"), "model.dim": 16, "model.depth": 1, "model.qk_dim": 8,
            "model.value_dim": 16, "model.window": 8, "train.batch_size": 8, "train.max_steps": 2,
            "train.eval_every": 2, "train.warmup_steps": 1, "train.max_minutes": 0}
    import smakit.train.classification_report as report_mod

    def second_pass(*args, **kwargs):
        raise AssertionError("the report must come from the test evaluation's own pass")

    monkeypatch.setattr(report_mod, "predict", second_pass)
    summary = run(load_recipe("seqboat-listops", "cpu", tiny), tmp_path / "run", progress=False)
    assert summary["steps"] == 2 and 0 <= summary["test"]["accuracy"] <= 1
    assert sum(summary["classification"]["support"].values()) == 8
    assert summary["classification"]["accuracy"] == pytest.approx(summary["test"]["accuracy"])
    assert "confusion" not in summary["test"]
    assert len(list((tmp_path / "cache" / "listops").glob("lra-*.pt"))) == 3  # read from the files
