"""Models built from smakit parts: SeqBoat and its variants, routed transformers, generation."""

from .baselines import FeedForwardBlock, TransformerLayer
from .generation import generate
from .model import VARIANTS, SeqBoat
from .seqboat import SeqBoatLayer
from .sma_transformer import HybridSMA, SelfAttention, SMATransformer

__all__ = ["FeedForwardBlock", "HybridSMA", "SMATransformer", "SelfAttention", "SeqBoat", "SeqBoatLayer",
           "TransformerLayer", "VARIANTS", "generate"]
