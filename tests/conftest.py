"""Test configuration: run the Triton kernels through the interpreter when there is no GPU.

Triton reads TRITON_INTERPRET when ``@triton.jit`` decorates, so it is set here, before any
test module imports ``adex``.
"""

import importlib.util
import os

import torch

if importlib.util.find_spec("triton") is None:  # not a dependency of the package itself
    raise ImportError(
        "the test suite runs the fused kernels (under the Triton interpreter on CPU) and "
        "needs triton, which the test extra installs: pip install -e '.[test]'"
    )

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
