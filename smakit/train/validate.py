"""Check a recipe's tables (types, ranges, unknown keys) before any data or model is built.

Each error is one line naming the key (as the command line spells it) and what was expected;
an unknown key lists the valid ones.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import fields
from pathlib import Path

# where a model's options go: the class, then the callables its **kwargs are passed on to
IO_KEYS = ("vocab_size", "input_dim", "n_classes", "lm")  # set from the data, not the recipe
PATH_KEYS = ("path", "root", "cache_dir")  # data keys that name files: stored resolved


def _option_sources(arch: str) -> list:
    from ..models import HybridSMA, SeqBoat, SeqBoatLayer, SMATransformer
    from ..routing import ThresholdRouter, TopKRouter
    from ..sma import SparseModularActivation

    routed = [SparseModularActivation, ThresholdRouter, TopKRouter]
    return {"seqboat": [SeqBoat, SeqBoatLayer], "sma_transformer": [SMATransformer, *routed],
            "hybrid": [HybridSMA, *routed]}.get(arch, [])


def accepted_keys(*callables) -> tuple[set[str], bool]:
    """Named parameters of ``callables`` and whether the last one takes ``**kwargs`` too."""
    names, open_ended = set(), False
    for fn in callables:
        params = inspect.signature(fn).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        open_ended = any(p.kind == p.VAR_KEYWORD for p in params)
    return names - {"self", "module", "modules", "num_modules"}, open_ended


def _unknown(section: str, given, valid: set[str]) -> None:
    bad = sorted(set(given) - valid)
    if bad:
        close = difflib.get_close_matches(bad[0], valid, n=1)
        hint = f" (did you mean {section}.{close[0]}?)" if close else ""
        raise ValueError(f"unknown key{'s' if len(bad) > 1 else ''} {', '.join(f'{section}.{k}' for k in bad)}"
                         f"{hint}; valid {section} keys: {', '.join(sorted(valid))}")


def check_model_table(model: dict) -> None:
    """Unknown keys and keys the data sets (``vocab_size``...) are refused."""
    arch = model.get("arch", "seqboat")
    sources = _option_sources(arch)
    if not sources:
        raise ValueError(f"model.arch must be one of seqboat, sma_transformer, hybrid; got {arch!r}")
    taken = sorted(set(model) & set(IO_KEYS))
    if taken:
        raise ValueError(f"model.{taken[0]} is set from the data set; remove it from the recipe")
    names, open_ended = accepted_keys(*sources)
    if not open_ended:
        _unknown("model", model, (names | {"arch"}) - set(IO_KEYS))
    for fn in sources:
        for p in inspect.signature(fn).parameters.values():
            if p.name in model:
                _check_like_default(f"model.{p.name}", model[p.name], p.default)


def _check_like_default(key: str, value, default) -> None:
    """A string where a number is expected (or the reverse) is surely a typo."""
    if default is inspect.Parameter.empty or default is None or isinstance(default, bool):
        return
    if isinstance(default, (int, float)) and not _is_number(value):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if isinstance(default, str) and not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {value!r}")


def check_data_table(data: dict, loading_keys=()) -> None:
    """The dataset name is known and its options are parameters of its class."""
    from ..data import DATASETS

    name = data.get("name")
    if name not in DATASETS:
        raise ValueError(f"data.name must be one of {', '.join(sorted(DATASETS))}; got {name!r}")
    names, open_ended = accepted_keys(DATASETS[name])
    if not open_ended:
        _unknown("data", data, (names - {"split"}) | {"name", *loading_keys})
    for p in inspect.signature(DATASETS[name]).parameters.values():
        if p.name in data:
            _check_like_default(f"data.{p.name}", data[p.name], p.default)


def resolve_paths(data: dict) -> dict:
    """``data`` with relative file paths made absolute (a run must not depend on the cwd)."""
    out = dict(data)
    for key in PATH_KEYS:
        if isinstance(out.get(key), str) and out[key]:
            out[key] = str(Path(out[key]).expanduser().resolve())
    return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# key: (test, what is expected)
TRAIN_RULES = {
    "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "grad_accum": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "min_lr_ratio": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "warmup_steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "max_steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "betas": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v),
              "two numbers in [0, 1), like [0.9, 0.98]"),
    "grad_clip": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (0 disables clipping)"),
    "aux_weight": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "eval_every": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "eval_batches": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = the whole split)"),
    "log_every": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "amp": (lambda v: v in ("auto", "bf16", "fp16", "none"), "one of auto, bf16, fp16, none"),
    "seed": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "num_workers": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "max_minutes": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (0 = no limit)"),
}


def check_train_table(cls, table: dict):
    """``cls(**table)`` (a ``TrainConfig``) after checking every key's type and range."""
    known = {f.name for f in fields(cls)}
    _unknown("train", table, known)
    for key, value in table.items():
        test, expected = TRAIN_RULES.get(key, (lambda v: True, ""))
        if not test(value):
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"train.{key} ({flag}) must be {expected}, got {value!r}")
    return cls(**table)
