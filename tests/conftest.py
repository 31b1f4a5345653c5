"""Run the Triton kernels through the interpreter on CPU-only machines.

Triton reads ``TRITON_INTERPRET`` when a kernel is defined, so it is set here, before any
test module imports ``smakit.ops.compaction.triton``. Machines with a GPU run the kernels
compiled.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
