"""Elementwise formulas of the fused CPU kernels (numba, scalar), one for one the Triton
device functions of ``adex.kernels.device_math``: exprel and its derivative, the surrogate
derivatives (``adex.surrogate`` kinds and hyper-parameter order), BrainPy's reset and the
clamped exponential term.

The kernels compute in float64 scalars whatever the storage dtype (float32 or float64
arrays); what they store rounds to it. exprel is a Taylor polynomial inside the series radius
of ``adex.exprel`` (|z| < 0.5, where ``dt * J`` lies in typical use), as in the Triton
kernels but with enough terms for float64 rounding, and ``(e^z - 1)/z`` outside; the
exponentials of the step (exprel's, the clamped exponential term's) are
:func:`adex.cpu.fastexp.exp` (no libm call on the hot path, so the step vectorizes), and
the step's choices are selects, not branches. exprel's derivative uses the reference's
series inside the same radius. Division follows IEEE (numba's ``error_model='numpy'``:
inf/NaN, as torch), never a Python ZeroDivisionError.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from adex.cpu.fastexp import exp as fast_exp
from adex.exprel import _DERIV_COEFFS, _SERIES_RADIUS
from adex.reference import EXP_CLAMP

_DERIV = np.array(_DERIV_COEFFS[::-1], dtype=np.float64)  # Horner order: highest first
# exprel(z) = sum_{n>=0} z^n/(n+1)!: 15 terms leave < 5e-17 relative at |z| = 0.5
_VALUE = np.array([1.0 / math.factorial(n + 1) for n in range(15)][::-1], dtype=np.float64)
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_SQRT_PI = math.sqrt(math.pi)

JIT = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")
"""numba options of every CPU device function and kernel: on-disk cache (compiled once per
machine), IEEE arithmetic (no reassociation: the kernels must agree with the reference; a
division by zero gives inf/NaN as in torch)."""


@njit(inline="always", **JIT)
def exprel(z: float) -> float:
    """``(e^z - 1)/z``, 1 at ``z = 0``: both branches computed and one selected (no
    control flow, so a loop over neurons vectorizes; the far branch's 0/0 at z = 0 is
    discarded)."""
    p = 0.0
    for c in _VALUE:
        p = p * z + c
    far = (fast_exp(z) - 1.0) / z  # |z| >= 0.5: no cancellation in e^z - 1
    return p if abs(z) < _SERIES_RADIUS else far


@njit(inline="always", **JIT)
def exprel_derivative(z: float, value: float) -> float:
    """``d exprel/dz``: the series near 0, ``((z - 1) exprel(z) + 1)/z`` elsewhere (both
    computed, one selected)."""
    p = 0.0
    for c in _DERIV:
        p = p * z + c
    far = ((z - 1.0) * value + 1.0) / z
    return p if abs(z) < _SERIES_RADIUS else far


@njit(inline="always", **JIT)
def relu_grad(au: float, alpha: float, width: float) -> float:
    """ReluGrad's ``g(u) = max(alpha * width - alpha * |u|, 0)`` from ``au = |u|`` (the
    models' default surrogate: the backward evaluates it in a vectorized loop)."""
    return max(alpha * width - alpha * au, 0.0)


@njit(**JIT)
def surrogate_grad(u: float, p0: float, p1: float, p2: float, p3: float, kind: int) -> float:
    """``g(u)`` of ``adex.surrogate`` kind ``kind`` with hyper-parameters p0..p3."""
    au = abs(u)
    if kind == 0:  # ReluGrad(alpha, width)
        return relu_grad(au, p0, p1)
    if kind == 1:  # Sigmoid(alpha)
        s = 1.0 / (1.0 + math.exp(-p0 * u))
        return p0 * s * (1.0 - s)
    if kind == 2:  # Arctan(alpha)
        q = math.pi / 2.0 * p0 * u
        return (p0 / 2.0) / (1.0 + q * q)
    if kind == 3:  # GaussianGrad(sigma, alpha)
        return p1 * math.exp(-(u * u) / (2.0 * p0 * p0)) / (_SQRT_2PI * p0)
    if kind == 4:  # InvSquareGrad(alpha)
        q = p0 * au + 1.0
        return 1.0 / (q * q)
    if kind == 5:  # PiecewiseQuadratic(alpha)
        return p0 - p0 * p0 * au if au <= 1.0 / p0 else 0.0
    if kind == 6:  # PiecewiseExp(alpha)
        return (p0 / 2.0) * math.exp(-p0 * au)
    if kind == 7:  # SoftSign(alpha)
        q = 1.0 + abs(p0 * u)
        return (p0 / 2.0) / (q * q)
    if kind == 8:  # ERF(alpha)
        return (p0 / _SQRT_PI) * math.exp(-(p0 * p0) * u * u)
    if kind == 9:  # SlayerGrad(alpha)
        return math.exp(-p0 * au)
    if kind == 10:  # NonzeroSignLog(alpha)
        return 1.0 / (1.0 / p0 + au)
    if kind == 11:  # PiecewiseLeakyRelu(c, w)
        return p0 if au > p1 else 1.0 / (2.0 * p1)
    if kind == 12:  # LeakyRelu(alpha, beta)
        return p0 if u < 0.0 else p1
    if kind == 13:  # LogTailedRelu(alpha)
        return p0 if u <= 0.0 else 1.0 / max(u, 1.0)
    if kind == 14:  # QPseudoSpike(alpha): (1 + 2|u|/(alpha+1))^(-alpha)
        return (1.0 + 2.0 * au / (p0 + 1.0)) ** (-p0)
    if kind == 15:  # S2NN(alpha, beta, epsilon)
        if u < 0.0:
            s = 1.0 / (1.0 + math.exp(-p0 * u))
            return p0 * s * (1.0 - s)
        return p1 / (u + 1.0)
    if kind == 16:  # MultiGaussianGrad(h, s, sigma, scale)
        wide = p1 * p2
        n0 = math.exp(-(u * u) / (2.0 * p2 * p2)) / (_SQRT_2PI * p2)
        up, dn = u - p2, u + p2
        n1 = math.exp(-(up * up) / (2.0 * wide * wide)) / (_SQRT_2PI * wide)
        n2 = math.exp(-(dn * dn) / (2.0 * wide * wide)) / (_SQRT_2PI * wide)
        return p3 * ((1.0 + p0) * n0 - p0 * n1 - p0 * n2)
    # 17: SquarewaveFourierSeries(n, t_period)
    omega = 2.0 * math.pi / p1
    g = 0.0
    for i in range(int(p0)):
        g += math.cos((2.0 * i + 1.0) * omega * u)
    return (4.0 / p1) * g


@njit(inline="always", **JIT)
def reset(v: float, v_th: float, v_reset: float, theta: float, itheta: float, hard: bool):
    """BrainPy's reset from the stored (pre-reset) V: ``(V', spike of V, u)`` with the
    spike ``V >= V_th`` and ``u = (V - V_th) * (1/theta)`` (``itheta``: the neuron's
    precomputed reciprocal, as the Triton kernels hoist it); selects, no control flow."""
    u = (v - v_th) * itheta
    s = 1.0 if v >= v_th else 0.0
    v_hard = v - (v - v_reset) * s
    v_soft = v - theta * s
    return (v_hard if hard else v_soft), s, u


@njit(inline="always", **JIT)
def exp_term(v_r: float, v_T: float, i_delta_T: float):
    """``z = (V' - V_T) * (1/delta_T)`` (``i_delta_T``: the precomputed reciprocal), ``E =
    exp(min(z, 20))`` and JAX's slope of the clamp."""
    z = (v_r - v_T) * i_delta_T
    e = fast_exp(min(z, EXP_CLAMP))
    slope = 1.0 if z < EXP_CLAMP else (0.5 if z == EXP_CLAMP else 0.0)
    return z, e, slope
