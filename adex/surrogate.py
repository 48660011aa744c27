"""Surrogate spike functions with BrainPy's (braintools') names, defaults and gradients.

A spike is the Heaviside step of the scaled membrane variable ``u = (V - V_th) / (V_th - V_reset)``
with ``H(0) = 1``. The forward value is exact (0 or 1); the backward pass replaces the step's
derivative by a smooth ``g(u)``. Each surrogate here has a ``kind`` id and up to four
hyper-parameters that the fused backward kernel evaluates with the same formula
(``adex.kernels.surrogate_grad``), so the reference and the kernels agree.
"""

from __future__ import annotations

import math
import numbers
from typing import ClassVar

import torch

__all__ = [
    "ERF",
    "S2NN",
    "Arctan",
    "GaussianGrad",
    "InvSquareGrad",
    "LeakyRelu",
    "LogTailedRelu",
    "MultiGaussianGrad",
    "NonzeroSignLog",
    "PiecewiseExp",
    "PiecewiseLeakyRelu",
    "PiecewiseQuadratic",
    "QPseudoSpike",
    "ReluGrad",
    "Sigmoid",
    "SlayerGrad",
    "SoftSign",
    "SquarewaveFourierSeries",
    "Surrogate",
]

_SQRT_2PI = math.sqrt(2.0 * math.pi)
_SQRT_PI = math.sqrt(math.pi)


class _Heaviside(torch.autograd.Function):
    """``H(u)`` (with ``H(0) = 1``) forward, ``grad * g(u)`` backward."""

    @staticmethod
    def forward(u: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
        return (u >= 0).to(u.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        u, surrogate = inputs
        ctx.save_for_backward(u)
        ctx.surrogate = surrogate

    @staticmethod
    def backward(ctx, grad_spike):
        (u,) = ctx.saved_tensors
        return grad_spike * ctx.surrogate.grad(u), None


class Surrogate:
    """Base class: a Heaviside forward with the surrogate derivative ``g(u)`` backward.

    Subclasses set ``kind`` (the id the fused kernel switches on), ``param_names`` and
    implement :meth:`grad`. Calling the object on a tensor ``u`` (dimensionless) returns
    ``H(u)`` in ``u``'s dtype with ``g(u)`` as its derivative.
    """

    kind: ClassVar[int]
    param_names: ClassVar[tuple[str, ...]]
    nonnegative: ClassVar[tuple[str, ...]] = ()
    """Hyper-parameters that may be 0; every other one must be > 0 (a negative scale or
    width flips or breaks the gradient), and all finite real numbers."""

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return _Heaviside.apply(u, self)

    def grad(self, u: torch.Tensor) -> torch.Tensor:
        """The surrogate derivative ``g(u)``, elementwise, in ``u``'s dtype."""
        raise NotImplementedError

    @property
    def params(self) -> tuple[float, float, float, float]:
        """The hyper-parameters as four floats (zero-padded), in ``param_names`` order."""
        values = [float(getattr(self, n)) for n in self.param_names]
        return tuple(values + [0.0] * (4 - len(values)))  # type: ignore[return-value]

    def __repr__(self) -> str:
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.param_names)
        return f"{type(self).__name__}({args})"

    def __setattr__(self, name: str, value: object) -> None:
        # the hyper-parameters are read into a layer's ScanSpec once, at construction: a
        # later change would be silently ignored, so it is refused
        if name in type(self).param_names and name in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}.{name} is fixed at construction; build a new "
                f"surrogate (e.g. layer.spk_fun = {type(self).__name__}({name}=...))"
            )
        if name in type(self).param_names:
            value = _checked_hyper(type(self).__name__, name, value,
                                   name in type(self).nonnegative)  # fmt: skip
        object.__setattr__(self, name, value)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.params == other.params  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.params))


def _checked_hyper(cls: str, name: str, value: object, zero_ok: bool) -> float | int:
    """A surrogate hyper-parameter: a finite real number, > 0 (or >= 0 where ``zero_ok``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{cls}: {name} must be a real number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"{cls}: {name} must be finite and {bound}, got {value!r}")
    return value


class ReluGrad(Surrogate):
    """Triangle: ``g(u) = max(alpha*width - alpha*|u|, 0)``. The models' default."""

    kind = 0
    param_names = ("alpha", "width")

    def __init__(self, alpha: float = 0.3, width: float = 1.0):
        self.alpha, self.width = alpha, width

    def grad(self, u):
        return torch.clamp(self.alpha * self.width - self.alpha * u.abs(), min=0.0)


class Sigmoid(Surrogate):
    """``g(u) = alpha * s * (1 - s)`` with ``s = sigmoid(alpha * u)``."""

    kind = 1
    param_names = ("alpha",)

    def __init__(self, alpha: float = 4.0):
        self.alpha = alpha

    def grad(self, u):
        s = torch.sigmoid(self.alpha * u)
        return self.alpha * s * (1.0 - s)


class Arctan(Surrogate):
    """``g(u) = (alpha/2) / (1 + (pi/2 * alpha * u)^2)``."""

    kind = 2
    param_names = ("alpha",)

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def grad(self, u):
        return (self.alpha / 2.0) / (1.0 + (math.pi / 2.0 * self.alpha * u) ** 2)


class GaussianGrad(Surrogate):
    """``g(u) = alpha * exp(-u^2 / (2 sigma^2)) / (sqrt(2 pi) sigma)``."""

    kind = 3
    param_names = ("sigma", "alpha")

    def __init__(self, sigma: float = 0.5, alpha: float = 0.5):
        self.sigma, self.alpha = sigma, alpha

    def grad(self, u):
        return self.alpha * torch.exp(-(u**2) / (2.0 * self.sigma**2)) / (_SQRT_2PI * self.sigma)


class InvSquareGrad(Surrogate):
    """``g(u) = 1 / (alpha*|u| + 1)^2``."""

    kind = 4
    param_names = ("alpha",)

    def __init__(self, alpha: float = 100.0):
        self.alpha = alpha

    def grad(self, u):
        return 1.0 / (self.alpha * u.abs() + 1.0) ** 2


class PiecewiseQuadratic(Surrogate):
    """``g(u) = alpha - alpha^2 |u|`` for ``|u| <= 1/alpha``, else 0."""

    kind = 5
    param_names = ("alpha",)

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def grad(self, u):
        inside = u.abs() <= 1.0 / self.alpha
        return torch.where(inside, self.alpha - self.alpha**2 * u.abs(), torch.zeros_like(u))


class PiecewiseExp(Surrogate):
    """``g(u) = (alpha/2) * exp(-alpha*|u|)``."""

    kind = 6
    param_names = ("alpha",)

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def grad(self, u):
        return (self.alpha / 2.0) * torch.exp(-self.alpha * u.abs())


class SoftSign(Surrogate):
    """``g(u) = (alpha/2) / (1 + |alpha*u|)^2``."""

    kind = 7
    param_names = ("alpha",)

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def grad(self, u):
        return (self.alpha / 2.0) / (1.0 + (self.alpha * u).abs()) ** 2


class ERF(Surrogate):
    """``g(u) = (alpha/sqrt(pi)) * exp(-alpha^2 u^2)``."""

    kind = 8
    param_names = ("alpha",)

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def grad(self, u):
        return (self.alpha / _SQRT_PI) * torch.exp(-(self.alpha**2) * u**2)


class SlayerGrad(Surrogate):
    """``g(u) = exp(-alpha*|u|)``."""

    kind = 9
    param_names = ("alpha",)

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def grad(self, u):
        return torch.exp(-self.alpha * u.abs())


class NonzeroSignLog(Surrogate):
    """``g(u) = 1 / (1/alpha + |u|)``."""

    kind = 10
    param_names = ("alpha",)

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def grad(self, u):
        return 1.0 / (1.0 / self.alpha + u.abs())


class PiecewiseLeakyRelu(Surrogate):
    """``g(u) = c`` for ``|u| > w``, else ``1/(2w)``."""

    kind = 11
    param_names = ("c", "w")
    nonnegative = ("c",)

    def __init__(self, c: float = 0.01, w: float = 1.0):
        self.c, self.w = c, w

    def grad(self, u):
        return torch.where(
            u.abs() > self.w, torch.full_like(u, self.c), torch.full_like(u, 1.0 / (2.0 * self.w))
        )


class LeakyRelu(Surrogate):
    """``g(u) = alpha`` for ``u < 0``, else ``beta``."""

    kind = 12
    param_names = ("alpha", "beta")
    nonnegative = ("alpha", "beta")

    def __init__(self, alpha: float = 0.1, beta: float = 1.0):
        self.alpha, self.beta = alpha, beta

    def grad(self, u):
        return torch.where(u < 0, torch.full_like(u, self.alpha), torch.full_like(u, self.beta))


class LogTailedRelu(Surrogate):
    """``g(u) = alpha`` for ``u <= 0``; 1 for ``0 < u <= 1``; ``1/u`` for ``u > 1``."""

    kind = 13
    param_names = ("alpha",)
    nonnegative = ("alpha",)

    def __init__(self, alpha: float = 0.0):
        self.alpha = alpha

    def grad(self, u):
        tail = 1.0 / torch.clamp(u, min=1.0)
        return torch.where(u <= 0, torch.full_like(u, self.alpha), tail)


class QPseudoSpike(Surrogate):
    """``g(u) = (1 + 2|u|/(alpha + 1))^(-alpha)``."""

    kind = 14
    param_names = ("alpha",)

    def __init__(self, alpha: float = 2.0):
        self.alpha = alpha

    def grad(self, u):
        return (1.0 + 2.0 * u.abs() / (self.alpha + 1.0)) ** (-self.alpha)


class S2NN(Surrogate):
    """``g(u) = alpha*s*(1-s)`` (``s = sigmoid(alpha u)``) for ``u < 0``, else ``beta/(u+1)``.

    ``epsilon`` only enters BrainPy's forward primitive, not the gradient; it is kept for
    signature compatibility.
    """

    kind = 15
    param_names = ("alpha", "beta", "epsilon")

    def __init__(self, alpha: float = 4.0, beta: float = 1.0, epsilon: float = 1e-8):
        self.alpha, self.beta, self.epsilon = alpha, beta, epsilon

    def grad(self, u):
        s = torch.sigmoid(self.alpha * u)
        right = self.beta / (torch.clamp(u, min=0.0) + 1.0)
        return torch.where(u < 0, self.alpha * s * (1.0 - s), right)


class MultiGaussianGrad(Surrogate):
    """``g(u) = scale*[(1+h) N(u;0,sigma) - h N(u;sigma,s*sigma) - h N(u;-sigma,s*sigma)]``."""

    kind = 16
    param_names = ("h", "s", "sigma", "scale")

    def __init__(self, h: float = 0.15, s: float = 6.0, sigma: float = 0.5, scale: float = 0.5):
        self.h, self.s, self.sigma, self.scale = h, s, sigma, scale

    def grad(self, u):
        def normal(mu: float, sd: float) -> torch.Tensor:
            return torch.exp(-((u - mu) ** 2) / (2.0 * sd**2)) / (_SQRT_2PI * sd)

        wide = self.s * self.sigma
        mix = (1.0 + self.h) * normal(0.0, self.sigma)
        mix = mix - self.h * normal(self.sigma, wide) - self.h * normal(-self.sigma, wide)
        return self.scale * mix


class SquarewaveFourierSeries(Surrogate):
    """``g(u) = (4/T) * sum_{i=1..n} cos((2i-1) * (2 pi / T) * u)`` with ``T = t_period``."""

    kind = 17
    param_names = ("n", "t_period")

    def __init__(self, n: int = 2, t_period: float = 8.0):
        if int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        self.n, self.t_period = int(n), t_period

    def grad(self, u):
        w = 2.0 * math.pi / self.t_period
        total = torch.zeros_like(u)
        for i in range(1, self.n + 1):
            total = total + torch.cos((2 * i - 1) * w * u)
        return (4.0 / self.t_period) * total
