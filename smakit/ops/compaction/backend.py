"""Where the compaction backend is chosen: :func:`resolve` a ``backend=`` argument, :func:`get` its module.

Both backends, ``naive.py`` (``"torch"``) and ``triton.py`` (``"triton"``), provide
``compress_fwd``, ``scatter_rows`` and ``gather_rows`` with the same signatures.
"""

from __future__ import annotations

from types import ModuleType

import torch

from . import naive

BACKENDS = ("auto", "torch", "triton")


def _triton() -> ModuleType:
    from . import triton as triton_kernels  # imported on first use: triton is optional

    return triton_kernels


def triton_usable(device: torch.device) -> bool:
    """Whether the Triton kernels can run on ``device``: CUDA, or CPU under ``TRITON_INTERPRET=1``."""
    try:
        return _triton().usable_on(device)
    except ImportError:
        return False


@torch.compiler.assume_constant_result
def resolve(backend: str, device: torch.device) -> str:
    """The backend that runs for tensors on ``device``: ``"torch"`` or ``"triton"``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return "torch"
    if triton_usable(device):
        return "triton"
    if backend == "auto":
        return "torch"
    raise RuntimeError(
        f"backend='triton' needs the triton package and CUDA tensors (got {device.type} tensors); CPU tensors "
        "run the kernels only under the Triton interpreter, with TRITON_INTERPRET=1 set before smakit imports them"
    )


def get(backend: str) -> ModuleType:
    """The module implementing a resolved ``backend``."""
    return _triton() if backend == "triton" else naive
