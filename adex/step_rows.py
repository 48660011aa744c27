"""Incoming gradients that are the same at every step, handed to the kernels as one row."""

from __future__ import annotations

from torch import Tensor


def per_step_or_row(grad: Tensor | None) -> Tensor | None:
    """A ``[T, *S]`` incoming gradient as it is, or its ``[1, *S]`` first row where it is
    the same at every step (stride 0 over T: the gradient of a sum or mean over the whole
    output, or over time, as a rate readout takes), which the backward kernels then read
    for every step instead of a materialized ``[T, *S]`` copy. None stays None."""
    if grad is not None and grad.shape[0] > 1 and grad.stride(0) == 0:
        return grad[:1]
    return grad
