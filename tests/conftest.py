"""Test configuration: run the Triton kernels through the interpreter when there is no GPU.

Triton reads TRITON_INTERPRET when ``@triton.jit`` decorates, so it is set here, before any
test module imports ``adex``.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
