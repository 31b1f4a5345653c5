"""Sub-modules to compose and route: EMA, local gated attention, self-attention, MLP, depthwise
convolution."""

from .attention import LocalGatedAttention, local_attention
from .conv import CausalConv
from .ema import MultiHeadEMA, fft_causal_conv
from .mlp import MLP
from .position import FourierRelativeBias, RelativePositionBias, apply_rotary, relative_bucket, rotary_frequencies
from .self_attention import SelfAttention

__all__ = [
    "CausalConv",
    "FourierRelativeBias",
    "LocalGatedAttention",
    "MLP",
    "MultiHeadEMA",
    "RelativePositionBias",
    "SelfAttention",
    "apply_rotary",
    "fft_causal_conv",
    "local_attention",
    "relative_bucket",
    "rotary_frequencies",
]
