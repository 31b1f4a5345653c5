"""Feed-forward blocks: GELU MLP and SwiGLU."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import default

ACTIVATIONS = ("gelu", "swiglu")


def check_activation(activation, name: str = "activation") -> None:
    """One-line error naming the caller's argument when ``activation`` is not in :data:`ACTIVATIONS`."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"{name} must be one of {ACTIVATIONS}, got {activation!r}")


class MLP(nn.Module):
    """Position-wise feed-forward network, GELU or SwiGLU.

    ``gelu``: ``W_2 gelu(W_1 x)``; ``swiglu``: ``W_2 (silu(x W_g) * x W_1)``. Pointwise, so it
    works behind :func:`smakit.sma` in either layout (``layout="flat"`` avoids padding).

    Args:
        dim (int): input size ``D``.
        hidden (int, optional): hidden size. Default: ``4 * dim`` (gelu) or
            ``8 * dim // 3`` (swiglu, same parameter count).
        out_dim (int, optional): output size. Default: ``dim``.
        activation (str): ``"gelu"`` or ``"swiglu"``. Default: ``"gelu"``.
        dropout (float): dropout on the hidden activations. Default: 0.0.
        bias (bool): biases in the projections. Default: ``True``.

    Shape:
        - x: ``[..., D]``
        - output: ``[..., out_dim]``

    Examples::

        >>> mlp = MLP(32, activation="swiglu")
        >>> mlp(torch.randn(2, 5, 32)).shape
        torch.Size([2, 5, 32])
        >>> sma(MLP(32), dim=32, layout="flat")(torch.randn(2, 5, 32)).shape
        torch.Size([2, 5, 32])
    """

    def __init__(self, dim: int, hidden: int | None = None, out_dim: int | None = None,
                 activation: str = "gelu", dropout: float = 0.0, bias: bool = True):
        super().__init__()
        check_activation(activation)
        self.dim, self.activation = dim, activation
        self.hidden = default(hidden, 4 * dim if activation == "gelu" else 8 * dim // 3)
        self.out_dim = default(out_dim, dim)
        gated = activation == "swiglu"
        self.fc1 = nn.Linear(dim, (2 if gated else 1) * self.hidden, bias=bias)
        self.fc2 = nn.Linear(self.hidden, self.out_dim, bias=bias)
        self.drop = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        if self.activation == "swiglu":
            a, g = h.chunk(2, dim=-1)
            h = a * F.silu(g)
        else:
            h = F.gelu(h)
        return self.fc2(self.drop(h))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}, out_dim={self.out_dim}, activation={self.activation!r}"
