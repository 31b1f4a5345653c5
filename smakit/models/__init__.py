"""Models built from smakit parts: the SeqBoat layer and model, variants, generation."""

from .baselines import FeedForwardBlock, TransformerLayer
from .model import VARIANTS, SeqBoat, generate
from .seqboat import SeqBoatLayer

__all__ = ["FeedForwardBlock", "SeqBoat", "SeqBoatLayer", "TransformerLayer", "VARIANTS", "generate"]
