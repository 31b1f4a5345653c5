"""Models built from smakit parts: one :class:`SequenceModel` backbone, and SeqBoat, the
Transformer baseline and the routed transformers built on it; generation."""

from ..modules import SelfAttention  # noqa: F401  (its former home; documented in smakit.modules)
from .backbone import SequenceModel
from .generation import generate
from .routed_transformers import HybridSMA, SMATransformer
from .seqboat import VARIANTS, SeqBoat, SeqBoatLayer
from .transformer import FeedForwardBlock, Transformer, TransformerLayer

__all__ = ["FeedForwardBlock", "HybridSMA", "SMATransformer", "SeqBoat", "SeqBoatLayer", "SequenceModel",
           "Transformer", "TransformerLayer", "VARIANTS", "generate"]
