"""``exprel(z) = (exp(z) - 1) / z`` with a derivative that stays accurate near ``z = 0``."""

from __future__ import annotations

import math

import torch

# d/dz exprel(z) = sum_{n>=0} (n+1)/(n+2)! z^n, used for |z| < _SERIES_RADIUS, where the
# closed form ((z-1) exprel(z) + 1)/z cancels. 16 terms reach float64 rounding at |z| = 0.5.
_SERIES_RADIUS = 0.5
_DERIV_COEFFS = [(n + 1) / math.factorial(n + 2) for n in range(16)]


def _exprel_value(z: torch.Tensor) -> torch.Tensor:
    nonzero = z != 0
    safe = torch.where(nonzero, z, torch.ones_like(z))
    return torch.where(nonzero, torch.expm1(safe) / safe, torch.ones_like(z))


def _exprel_derivative(z: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    small = z.abs() < _SERIES_RADIUS
    series = torch.full_like(z, _DERIV_COEFFS[-1])
    for c in reversed(_DERIV_COEFFS[:-1]):
        series = series * z + c
    safe = torch.where(small, torch.ones_like(z), z)
    closed = ((safe - 1.0) * value + 1.0) / safe
    return torch.where(small, series, closed)


class _Exprel(torch.autograd.Function):
    @staticmethod
    def forward(z: torch.Tensor) -> torch.Tensor:
        return _exprel_value(z)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (z,) = inputs
        ctx.save_for_backward(z, output)

    @staticmethod
    def backward(ctx, grad):
        z, value = ctx.saved_tensors
        return grad * _exprel_derivative(z, value)


def exprel(z: torch.Tensor) -> torch.Tensor:
    """``(exp(z) - 1)/z`` elementwise (1 at ``z = 0``), differentiable, in ``z``'s dtype."""
    return _Exprel.apply(z)
