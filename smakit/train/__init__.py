"""Training: recipes, the loop, plots and the end-to-end run behind ``smakit train``."""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import Recipe, list_recipes, load_recipe, parse_overrides
from .loop import TrainConfig, Trainer
from .run import format_summary, run
from .stopping import TrainingDiverged, TrainingInterrupted

__all__ = ["Recipe", "TrainConfig", "Trainer", "TrainingDiverged", "TrainingInterrupted", "format_summary",
           "list_recipes", "load_checkpoint", "load_recipe", "parse_overrides", "run", "save_checkpoint"]
