"""smakit: Sparse Modular Activation for PyTorch.

Route each token to the sub-modules that should run on it, compute only on those tokens,
and scatter the gated results back.
"""

from .integrations import sma_wrap
from .models import SeqBoat, SeqBoatLayer, generate
from .modules import MLP, CausalConv, LocalGatedAttention, MultiHeadEMA
from .ops import Compacted, compress, extract
from .routing import Routing, ThresholdRouter, TopKRouter, density_loss
from .sma import RoutingStats, SparseModularActivation, aux_losses, sma

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "CausalConv",
    "Compacted",
    "LocalGatedAttention",
    "MultiHeadEMA",
    "Routing",
    "RoutingStats",
    "SeqBoat",
    "SeqBoatLayer",
    "SparseModularActivation",
    "ThresholdRouter",
    "TopKRouter",
    "__version__",
    "aux_losses",
    "compress",
    "density_loss",
    "extract",
    "generate",
    "sma",
    "sma_wrap",
]
