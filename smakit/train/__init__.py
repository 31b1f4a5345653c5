"""Training: recipes, the loop, plots and the end-to-end run behind ``smakit train``."""

from .config import Recipe, list_recipes, load_recipe, parse_overrides
from .loop import TrainConfig, Trainer
from .run import format_summary, run

__all__ = ["Recipe", "TrainConfig", "Trainer", "format_summary", "list_recipes", "load_recipe",
           "parse_overrides", "run"]
