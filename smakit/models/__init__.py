"""Models built from smakit parts: SeqBoat and its variants, routed transformers, generation."""

from .baselines import FeedForwardBlock, TransformerLayer
from .model import VARIANTS, SeqBoat, generate
from .seqboat import SeqBoatLayer
from .sma_transformer import HybridSMA, SelfAttention, SMATransformer

__all__ = ["FeedForwardBlock", "HybridSMA", "SMATransformer", "SelfAttention", "SeqBoat", "SeqBoatLayer",
           "TransformerLayer", "VARIANTS", "generate"]
