"""The ``smakit`` command: ``recipes``, ``train``, ``eval``, ``generate``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def _checkpoint_path(path: str) -> Path:
    p = Path(path)
    return p / "checkpoint.pt" if p.is_dir() else p


def cmd_recipes(args) -> int:
    from .train import list_recipes

    recipes = list_recipes()
    width = max(map(len, recipes), default=0)
    for name, description in recipes.items():
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_train(args, extra: list[str]) -> int:
    from .train import format_summary, load_recipe, parse_overrides, run

    recipe = load_recipe(args.recipe, args.preset, parse_overrides(extra))
    summary = run(recipe, args.out, device=args.device, progress=not args.no_progress)
    if "plots" in summary:  # main process only
        print(format_summary(summary))
    return 0


def _restore(path: str, device: str | None):
    """Rebuild a run's trainer from its checkpoint (weights loaded with ``weights_only=True``)."""
    from .train import Trainer
    from .train.config import Recipe

    ckpt = _checkpoint_path(path)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    r = state["recipe"]
    recipe = Recipe(r["name"], r["description"], r["data"], r["model"], r["train"], preset=r["preset"])
    trainer = Trainer(recipe, ckpt.parent, device=device, progress=False)
    if ckpt.name != "checkpoint.pt":
        trainer.load(ckpt)
    return trainer


def cmd_eval(args) -> int:
    trainer = _restore(args.checkpoint, args.device)
    print(json.dumps(trainer.evaluate(args.split), indent=2))
    return 0


def _check_generate_options(args) -> None:
    """Refuse bad sampling options before a checkpoint is read."""
    if not args.prompt:
        raise ValueError("--prompt must hold at least one character (the model continues it)")
    if args.length < 0:
        raise ValueError(f"--length must be >= 0, got {args.length}")
    if not args.temperature >= 0 or args.temperature == float("inf"):
        raise ValueError(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")


def cmd_generate(args) -> int:
    """Prompt read in one parallel prefill, then one step per new byte (see smakit.models.generate)."""
    from .models import generate

    _check_generate_options(args)
    trainer = _restore(args.checkpoint, args.device)
    model = trainer.model.eval()
    if not getattr(model, "lm", False):
        print("generate needs a language-model checkpoint (e.g. seqboat-charlm)", file=sys.stderr)
        return 2
    prompt = torch.tensor(list(args.prompt.encode("utf-8")), dtype=torch.long, device=trainer.device)
    g = torch.Generator(device=trainer.device).manual_seed(args.seed)
    out = generate(model, prompt.unsqueeze(0), args.length, temperature=args.temperature, top_k=args.top_k, generator=g)
    print(bytes(out[0].tolist()).decode("utf-8", errors="replace"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smakit", description="Sparse Modular Activation: recipes and tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("recipes", help="list the training recipes")
    train = sub.add_parser("train", help="train a recipe; extra --key value pairs override its config",
                           epilog="example: smakit train seqboat-listops --max-steps 30 --out runs/x")
    train.add_argument("recipe", help="recipe name (see `smakit recipes`) or a .toml path")
    train.add_argument("--out", required=True, help="run folder (resumes from its checkpoint)")
    train.add_argument("--preset", default="cpu", help="cpu (minutes on a laptop) or full (paper sizes)")
    train.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev = sub.add_parser("eval", help="evaluate a checkpoint")
    ev.add_argument("checkpoint", help="run folder or checkpoint.pt")
    ev.add_argument("--split", default="test", choices=["train", "val", "test"])
    ev.add_argument("--device", default=None)
    gen = sub.add_parser("generate", help="sample text from a char-LM checkpoint")
    gen.add_argument("checkpoint", help="run folder or checkpoint.pt")
    gen.add_argument("--prompt", default="The ")
    gen.add_argument("--length", type=int, default=200)
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--device", default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command != "train" and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "recipes":
            return cmd_recipes(args)
        if args.command == "train":
            return cmd_train(args, extra)
        if args.command == "eval":
            return cmd_eval(args)
        return cmd_generate(args)
    except ValueError as err:
        print(f"smakit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
