"""Recipes: small TOML files with ``[data]``, ``[model]``, ``[train]`` tables and presets.

A recipe is readable as documentation. Its ``[presets.NAME]`` tables hold dotted overrides
(``"model.depth" = 2``); the command line adds more (``--max-steps 30`` or
``--model.dim 64``). The resolved config is written beside every run.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SECTIONS = ("data", "model", "train")
DEFAULT_PRESET = "cpu"
NO_PRESET = "none"  # ``--preset none``: the recipe's base tables only
UNSET = "none"  # a table value ``"none"`` (``--model.density_target none``) removes the key: its default applies


def recipes_dir() -> Path:
    """``$SMAKIT_RECIPES`` or the recipes shipped in the package (``smakit/recipes/``)."""
    env = os.environ.get("SMAKIT_RECIPES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "recipes"


@dataclass
class Recipe:
    """A resolved recipe: its name, one-line description and the three config tables."""

    name: str
    description: str
    data: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    presets: dict = field(default_factory=dict)
    preset: str | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "preset": self.preset,
                "data": self.data, "model": self.model, "train": self.train}

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        """The inverse of :meth:`as_dict` (what a checkpoint stores)."""
        return cls(d["name"], d.get("description", ""), dict(d["data"]), dict(d["model"]), dict(d["train"]),
                   preset=d.get("preset"))


def list_recipes() -> dict[str, str]:
    """``{name: description}`` of every recipe in :func:`recipes_dir`."""
    out = {}
    for path in sorted(recipes_dir().glob("*.toml")):
        with open(path, "rb") as f:
            out[path.stem] = tomllib.load(f).get("description", "")
    return out


def load_recipe(name_or_path: str, preset: str | None = DEFAULT_PRESET, overrides: dict | None = None) -> Recipe:
    """Read a recipe by name (or path), apply a preset, then dotted ``overrides``.

    Args:
        name_or_path (str): a recipe name from ``smakit recipes`` or a ``.toml`` path.
        preset (str, optional): ``"cpu"`` (minutes on a laptop) or ``"full"`` (the paper's
            sizes); ``None`` or ``"none"`` for the base tables only. A recipe without any
            preset runs its base tables under the default too. Default: ``"cpu"``.
        overrides (dict, optional): ``{"train.max_steps": 30, "dim": 64, ...}``; a key
            without a section is looked up in ``train``, ``model``, ``data`` in that order.
            The value ``"none"`` removes the key, so the model's or trainer's own default
            applies (TOML has no null): ``--model.density_target none`` turns a recipe's
            default budget off.
    """
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = recipes_dir() / f"{name_or_path}.toml"
    if not path.exists():
        known = ", ".join(list_recipes()) or "none found"
        raise ValueError(f"unknown recipe {name_or_path!r}; known recipes: {known}")
    raw = _read_with_parents(path)
    recipe = Recipe(path.stem, raw.get("description", ""),
                    *(copy.deepcopy(raw.get(s, {})) for s in SECTIONS), raw.get("presets", {}))
    if preset == DEFAULT_PRESET and not recipe.presets:
        preset = None
    if preset is not None and preset != NO_PRESET:
        if preset not in recipe.presets:
            raise ValueError(f"recipe {recipe.name!r} has no preset {preset!r}; it has "
                             f"{sorted(recipe.presets) + [NO_PRESET]} ({NO_PRESET}: the base tables only)")
        recipe.preset = preset
        apply_overrides(recipe, recipe.presets[preset])
    apply_overrides(recipe, overrides or {})
    for section in SECTIONS:
        table = getattr(recipe, section)
        for key in [k for k, v in table.items() if v == UNSET]:
            del table[key]
    return recipe


def _read_with_parents(path: Path, seen: tuple = ()) -> dict:
    """A recipe's tables, on top of those of the recipe it ``extends`` (if any)."""
    if path in seen:
        raise ValueError(f"recipe {path.stem!r} extends itself through {[p.stem for p in seen]}")
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    base = _read_with_parents(_parent_path(path, parent), seen + (path,))
    for key, value in raw.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged = {**base[key]}
            for k, v in value.items():  # presets merge one level deeper
                merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
            base[key] = merged
        else:
            base[key] = value
    return base


def _parent_path(path: Path, parent) -> Path:
    """The recipe ``parent`` names: a bare recipe name beside ``path``, never a path elsewhere."""
    if not isinstance(parent, str) or not parent or any(c in parent for c in "/\\:") or parent.startswith("."):
        raise ValueError(f"recipe {path.stem!r}: extends must be the name of a recipe in the same folder, "
                         f"got {parent!r}")
    found = path.parent / f"{parent}.toml"
    if not found.exists():
        raise ValueError(f"recipe {path.stem!r} extends {parent!r}, but there is no {found}")
    return found


def apply_overrides(recipe: Recipe, overrides: dict) -> None:
    """Set dotted keys (``"model.dim"``) or bare keys found in train/model/data."""
    for key, value in overrides.items():
        key = key.replace("-", "_")
        if "." in key:
            section, name = key.split(".", 1)
            if section not in SECTIONS:
                raise ValueError(f"override {key!r}: section must be one of {SECTIONS}")
            getattr(recipe, section)[name] = value
            continue
        for section in SECTIONS:
            table = getattr(recipe, section)
            if key in table:
                table[key] = value
                break
        else:
            raise ValueError(f"override {key!r} matches no key of the recipe; use section.key to add one")


def parse_value(text: str):
    """A command-line value as TOML would read it (``30``, ``1e-3``, ``true``), else the string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(args: list[str]) -> dict:
    """``["--max-steps", "30", "--model.dim", "64"]`` -> ``{"max_steps": 30, "model.dim": 64}``."""
    out, i = {}, 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ValueError(f"expected --key value, got {arg!r}")
        key = arg[2:]
        if "=" in key:
            key, text = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ValueError(f"override {arg} needs a value")
            text = args[i + 1]
            i += 2
        out[key.replace("-", "_")] = parse_value(text)
    return out
