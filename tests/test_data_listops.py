"""ListOps: the LRA rules, exact early rejection, tokens, labels, the disk cache."""

import random
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smakit.data import ListOps, build_dataset, majority_baseline, pad_collate
from smakit.data import listops as lo


def full_tree(rand, depth=1):
    """The LRA recursion written plainly, no length limit, same random draws."""
    if depth >= lo.MAX_DEPTH or rand() > 0.25:
        return [lo.DIGIT_ID0 + int(rand() * 10)]
    nargs = 2 + int(rand() * 9)
    children = [full_tree(rand, depth + 1) for _ in range(nargs)]
    op = int(rand() * 4)
    return [lo.OP_ID0 + op] + [t for c in children for t in c] + [lo.CLOSE_ID]


def structure(ids):
    """(max operator nesting, argument counts) of a token sequence."""
    stack, deepest, arg_counts = [], 0, []
    for t in ids:
        if t == lo.CLOSE_ID:
            arg_counts.append(stack.pop())
        else:
            if stack:
                stack[-1] += 1
            if lo.OP_ID0 <= t < lo.CLOSE_ID:
                stack.append(0)
                deepest = max(deepest, len(stack))
    return deepest, arg_counts


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), max_len=st.integers(2, 400))
def test_early_rejection_is_exact(seed, max_len):
    # the generator stops a tree as soon as it cannot fit; that must be the same as
    # drawing the whole tree and then checking its length
    want = full_tree(random.Random(seed).random)
    out = []
    try:
        lo._draw_node(random.Random(seed).random, 1, out, 0, max_len)
    except lo._TooLong:
        assert len(want) >= max_len
    else:
        assert out == want and len(want) < max_len


@pytest.mark.parametrize("min_len,max_len", [(0, 12), (20, 60), (100, 300)])
def test_generated_trees_follow_the_rules(min_len, max_len):
    tokens, labels = lo.generate_listops(300, min_len, max_len, seed=3)
    assert len({tuple(t) for t in tokens}) == len(tokens) == 300
    for ids, label in zip(tokens, labels):
        assert min_len < len(ids) < max_len
        assert lo.evaluate_listops(ids) == label
        deepest, arg_counts = structure(ids)
        assert deepest <= lo.MAX_DEPTH - 1  # operators only above the depth cap
        assert all(2 <= n <= lo.MAX_ARGS for n in arg_counts)
        assert all(0 < t < lo.VOCAB_SIZE for t in ids)


def test_seeded_and_deterministic():
    a = lo.generate_listops(50, 20, 80, seed=7)
    assert a == lo.generate_listops(50, 20, 80, seed=7)
    assert a[0] != lo.generate_listops(50, 20, 80, seed=8)[0]


def test_label_skew_matches_lra():
    # LISTOPS.md: 0 and 9 about 17% each, other digits 7.5-9.5%
    _, labels = lo.generate_listops(3000, 10, 100, seed=0)
    freq = {k: v / len(labels) for k, v in Counter(labels).items()}
    assert 0.13 < freq[0] < 0.21 and 0.13 < freq[9] < 0.21
    assert all(0.05 < freq[d] < 0.12 for d in range(1, 9))


def test_too_narrow_range_raises():
    with pytest.raises(RuntimeError, match="distinct"):
        lo.generate_listops(50, 0, 3, seed=0)  # only the 10 single digits fit
    with pytest.raises(ValueError):
        lo.generate_listops(5, 10, 10)


@pytest.mark.parametrize("text,value", [
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
    ("[MED 1 2 ]", 1),  # even count: mean of the middle two, truncated
    ("[MED 3 4 6 9 ]", 5),
    ("[MED 7 1 3 ]", 3),
    ("[SM 9 8 7 ]", 4),
    ("[MIN [SM 5 5 ] 3 ]", 0),
    ("4", 4),
])
def test_evaluate_listops(text, value):
    assert lo.evaluate_listops(text) == value
    assert lo.detokenize(lo.tokenize(text)) == text


def test_tokenize_drops_lra_parentheses_and_bad_input():
    assert lo.tokenize("( ( [MAX 2 ) 9 ) ]") == lo.tokenize("[MAX 2 9 ]")
    assert lo.VOCAB_SIZE == 16 and lo.VOCAB[lo.PAD_ID] == "<pad>"
    with pytest.raises(ValueError):
        lo.evaluate_listops("[MAX 2 9")


def test_read_lra_tsv(tmp_path):
    f = tmp_path / "basic_test.tsv"
    f.write_text("Source\tTarget\n( ( [SM 3 ) 4 ) ]\t7\n[MIN 2 5 ]\t2\n")
    tokens, labels = lo.read_lra_tsv(f)
    assert labels == [7, 2] and [lo.evaluate_listops(t) for t in tokens] == labels


SMALL = {"num_train": 60, "num_val": 10, "num_test": 10, "min_len": 20, "max_len": 80, "seed": 1}


def test_dataset_splits_cache_and_collate(tmp_path, monkeypatch):
    splits = {s: ListOps(s, cache_dir=tmp_path, **SMALL) for s in ("train", "val", "test")}
    assert [len(d) for d in splits.values()] == [60, 10, 10]
    files = list(tmp_path.iterdir())
    assert len(files) == 1
    blob = torch.load(files[0], weights_only=True)
    assert blob["params"]["min_len"] == 20

    seen = set()
    for ds in splits.values():
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.dtype == torch.int64 and y.dtype == torch.int64 and y.dim() == 0
            assert 20 < x.shape[0] < 80 and lo.evaluate_listops(x) == int(y)
            seen.add(tuple(x.tolist()))
    assert len(seen) == 80  # no tree in two splits
    assert splits["test"].info.max_len == 79 and splits["test"].info.variable_length
    assert torch.equal(splits["train"].lengths(), torch.tensor([len(splits["train"][i][0]) for i in range(60)]))

    # a second build reads the file instead of generating
    def boom(*args, **kwargs):
        raise AssertionError("regenerated instead of loading the cache")

    monkeypatch.setattr(lo, "generate_listops", boom)
    again = build_dataset("listops", "val", cache_dir=tmp_path, **SMALL)
    assert all(torch.equal(again[i][0], splits["val"][i][0]) for i in range(10))
    with pytest.raises(AssertionError, match="regenerated"):
        ListOps("val", cache_dir=tmp_path, **{**SMALL, "seed": 2})

    items = [splits["train"][i] for i in range(5)]
    x, mask, y = pad_collate(items, pad_to_multiple=16)
    lengths = torch.tensor([len(it[0]) for it in items])
    assert x.shape[1] % 16 == 0 and x.shape[1] >= int(lengths.max())
    assert torch.equal(mask.sum(1), lengths)
    assert (x[~mask] == lo.PAD_ID).all() and (x[mask] != lo.PAD_ID).all()
    assert torch.equal(y, torch.stack([it[1] for it in items]))


def test_majority_baseline(tmp_path):
    train = ListOps("train", cache_dir=tmp_path, **SMALL)
    test = ListOps("test", cache_dir=tmp_path, **SMALL)
    cls, acc = majority_baseline(train, test)
    counts = Counter(train.targets.tolist())
    assert counts[cls] == max(counts.values())
    assert acc == pytest.approx((test.targets == cls).float().mean().item())
    assert majority_baseline(torch.tensor([1, 1, 2, 2]), [2, 1, 1]) == (1, pytest.approx(2 / 3))


def test_default_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SMAKIT_CACHE", str(tmp_path))
    ListOps("test", **SMALL)
    assert len(list((tmp_path / "listops").glob("listops-*.pt"))) == 1
