"""The ``smakit`` command: ``recipes``, ``train``, ``eval``, ``generate``."""

from __future__ import annotations

import argparse
import sys

import torch

from . import __version__

EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 1, 130


def cmd_recipes(args) -> int:
    from .train import list_recipes

    recipes = list_recipes()
    width = max(map(len, recipes), default=0)
    for name, description in recipes.items():
        print(f"{name:<{width}}  {description}")
    return 0


def cmd_train(args, extra: list[str]) -> int:
    from .train import format_summary, load_recipe, parse_overrides, run
    from .train._extra import MissingExtra, require_train_extra

    try:
        require_train_extra("smakit train")
    except MissingExtra as err:
        print(f"smakit: error: {err}", file=sys.stderr)
        return 2
    recipe = load_recipe(args.recipe, args.preset, parse_overrides(extra))
    summary = run(recipe, args.out, device=args.device, progress=not args.no_progress)
    if "plots" in summary:  # main process only
        print(format_summary(summary))
    return 0


def _restore(path: str, device: str | None, with_state: bool = False):
    """A read-only trainer for exactly the checkpoint ``path`` (a ``.pt`` file, or a run
    folder's ``checkpoint.pt``), built from the config stored in that file; writes nothing."""
    from .train import Recipe, Trainer
    from .train.checkpoint import checkpoint_file, load_checkpoint

    ckpt = checkpoint_file(path)
    state = load_checkpoint(ckpt)
    trainer = Trainer(Recipe.from_dict(state["recipe"]), None, device=device, progress=False)
    try:
        trainer.load_weights(state, ckpt)
    except BaseException:
        trainer.close(clean=False)
        raise
    trainer.step = state["step"]
    return (trainer, ckpt) if with_state else trainer


def cmd_eval(args) -> int:
    from .train.run import format_eval

    trainer, ckpt = _restore(args.checkpoint, args.device, with_state=True)
    done = False
    try:  # under torchrun every rank scores its shard; rank 0 prints the totals
        report = {"checkpoint": str(ckpt), "recipe": trainer.recipe.name, "preset": trainer.recipe.preset,
                  "step": trainer.step, "parameters": sum(p.numel() for p in trainer.model.parameters()),
                  "metrics": trainer.evaluate(args.split)}
        done = True
    finally:
        trainer.close(clean=done)
    if not trainer.ctx.is_main:
        return 0
    if trainer.info.task == "classification":
        from .data import majority_baseline

        cls, acc = majority_baseline(trainer.data["train"], trainer.data[args.split])
        report["majority_class"], report["majority_accuracy"] = cls, acc
    if args.json:
        from .train.rundir import dumps

        print(dumps(report, indent=2))
    else:
        print(format_eval(report))
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
    trainer.close()  # generation needs no process group (under torchrun, rank 0 prints)
    if not trainer.ctx.is_main:
        return 0
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
    parser.add_argument("--version", action="version", version=f"smakit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    common = argparse.ArgumentParser(add_help=False)  # --debug also after the command
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("recipes", help="list the training recipes", parents=[common])
    train = sub.add_parser("train", help="train a recipe; extra --key value pairs override its config",
                           epilog="example: smakit train seqboat-listops --max-steps 30 --out runs/x",
                           parents=[common])
    train.add_argument("recipe", help="recipe name (see `smakit recipes`) or a .toml path")
    train.add_argument("--out", required=True, help="run folder (resumes from its checkpoint)")
    train.add_argument("--preset", default="cpu",
                       help="cpu (minutes on a laptop), full (paper sizes) or none (the base tables)")
    train.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev = sub.add_parser("eval", help="evaluate a checkpoint (writes nothing)", parents=[common])
    ev.add_argument("checkpoint", help="run folder (its checkpoint.pt) or a .pt file, e.g. runs/x/best.pt")
    ev.add_argument("--split", default="test", choices=["train", "val", "test"])
    ev.add_argument("--device", default=None)
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    gen = sub.add_parser("generate", help="sample text from a char-LM checkpoint", parents=[common])
    gen.add_argument("checkpoint", help="run folder or checkpoint.pt")
    gen.add_argument("--prompt", default="The ")
    gen.add_argument("--length", type=int, default=200)
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--device", default=None)
    return parser


def _dispatch(args, extra) -> int:
    if args.command == "recipes":
        return cmd_recipes(args)
    if args.command == "train":
        return cmd_train(args, extra)
    if args.command == "eval":
        return cmd_eval(args)
    return cmd_generate(args)


def _os_error_text(err: OSError) -> str:
    what = {FileNotFoundError: "no such file or folder", PermissionError: "permission denied",
            IsADirectoryError: "is a folder, expected a file", NotADirectoryError: "not a folder"}
    reason = what.get(type(err), err.strerror or str(err))
    return f"{reason}: {err.filename}" if err.filename else str(err)


def main(argv: list[str] | None = None) -> int:
    """Run the ``smakit`` command; user mistakes print one line (``--debug`` for a traceback).

    Exit status: 0 done, 1 training diverged, 2 a usage or input error, 130 interrupted.
    """
    from .train.stopping import TrainingDiverged, TrainingInterrupted

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command != "train" and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if "--debug" in extra:  # after the recipe name: argparse left it to the overrides
        extra.remove("--debug")
        args.debug = True
    try:
        return _dispatch(args, extra)
    except (ValueError, OSError, TrainingDiverged, TrainingInterrupted, KeyboardInterrupt) as err:
        if args.debug:
            raise
        if isinstance(err, KeyboardInterrupt):
            print("smakit: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if isinstance(err, TrainingInterrupted):
            print(f"smakit: {err}", file=sys.stderr)
            return EXIT_INTERRUPTED
        text = _os_error_text(err) if isinstance(err, OSError) else str(err)
        print(f"smakit: error: {text}", file=sys.stderr)
        return EXIT_DIVERGED if isinstance(err, TrainingDiverged) else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
