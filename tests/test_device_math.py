"""The kernels' fp32 ``exprel`` and its derivative (``kernels/device_math.py``: degree-7
Taylor polynomials inside |z| < 0.5, closed forms outside) against float64, through the
same device functions the scans call (the interpreter on CPU, the compiled kernel on a GPU),
and the slope of the clamped exponential term at and around its clamp."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from adex.kernels.device_math import EXPREL_RADIUS, exp_term, exprel, exprel_derivative
from tests.conftest import DEVICE

ULP1 = 2.0**-23  # fp32 ulp of 1: relative spacing of fp32 values is 2^-24 .. 2^-23
# compiled, exp is ex2.approx (2 ulp) and the closed forms divide with div.approx.ftz
# (libdevice's fast division, 2 ulp, on every Triton): e^z - 1 amplifies exp's error up to
# 2.5x at |z| = 0.5, so twice the interpreter's (numpy's correctly rounded exp and
# division) bounds
APPROX = 1 if DEVICE == "cpu" else 2


@triton.jit
def _exprel_kernel(z_ptr, phi_ptr, dphi_ptr, n, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    z = tl.load(z_ptr + o, mask=m, other=0.0)
    phi = exprel(z)
    tl.store(phi_ptr + o, phi, mask=m)
    tl.store(dphi_ptr + o, exprel_derivative(z, phi), mask=m)


@triton.jit
def _slope_kernel(v_ptr, slope_ptr, n, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    v = tl.load(v_ptr + o, mask=m, other=0.0)
    _, _, slope = exp_term(v, 0.0, 1.0)
    tl.store(slope_ptr + o, slope, mask=m)


def _fp32_exprel(z: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    z = z.to(DEVICE)
    phi, dphi = torch.empty_like(z), torch.empty_like(z)
    _exprel_kernel[(triton.cdiv(z.numel(), 1024),)](z, phi, dphi, z.numel(), BLOCK=1024)
    return phi.cpu().double().numpy(), dphi.cpu().double().numpy()


def _float64_exprel(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """exprel and its derivative in float64: expm1 (no cancellation), and the derivative's
    series to 24 terms near 0 (float64 rounding at |z| <= 1), closed form beyond."""
    safe = np.where(z == 0, 1.0, z)
    phi = np.where(z == 0, 1.0, np.expm1(safe) / safe)
    series = np.zeros_like(z)
    for n in reversed(range(24)):
        series = series * z + (n + 1) / math.factorial(n + 2)
    closed = ((safe - 1.0) * phi + 1.0) / safe
    return phi, np.where(np.abs(z) <= 1.0, series, closed)


def _grid() -> torch.Tensor:
    """fp32 z: dense log-spaced magnitudes 1e-8 .. 30 of both signs (dt J is ~1e-2 in typical
    use, up to O(1) near a spike), the values next to the polynomial's radius, and 0."""
    mags = np.logspace(-8, math.log10(30.0), 4001)
    r = np.float32(EXPREL_RADIUS.value)
    edge = [np.nextafter(r, np.float32(0)), r, np.nextafter(r, np.float32(1))]
    vals = np.concatenate([mags, -mags, edge, -np.array(edge), [0.0]])
    return torch.tensor(vals, dtype=torch.float32)


def test_exprel_polynomial_is_fp32_accurate():
    """Inside the radius (the truncated polynomials, FMAs only) within 1 ulp of 1 relative
    to float64 (the Horner recurrence rounds at every step; the truncation itself is below
    0.35 ulp): degree 6 would not be."""
    z = _grid()
    z = z[z.abs() < EXPREL_RADIUS.value]
    phi, dphi = _fp32_exprel(z)
    ref_phi, ref_dphi = _float64_exprel(z.double().numpy())
    assert np.max(np.abs(phi / ref_phi - 1.0)) <= ULP1
    assert np.max(np.abs(dphi / ref_dphi - 1.0)) <= ULP1


@pytest.mark.parametrize("bound", [1.0, 30.0])
def test_exprel_closed_forms_accuracy(bound):
    """Outside the radius: exprel within 4 ulp (fp32 exp, then e^z - 1 and the division); its
    derivative ((z - 1) phi + 1)/z cancels most at z = -0.5 (|(z - 1) phi| = 1.18 against a
    value of 0.36 + the ~0.18 cancelled: phi's error grows ~6.5x), so within 32 ulp there."""
    z = _grid()
    z = z[(z.abs() >= EXPREL_RADIUS.value) & (z.abs() <= bound)]
    phi, dphi = _fp32_exprel(z)
    ref_phi, ref_dphi = _float64_exprel(z.double().numpy())
    assert np.max(np.abs(phi / ref_phi - 1.0)) <= 4 * APPROX * ULP1
    assert np.max(np.abs(dphi / ref_dphi - 1.0)) <= 32 * APPROX * ULP1


def test_exp_term_slope_at_the_clamp():
    """JAX's d min(z, 20)/dz: 1 below 20, 1/2 at 20, 0 above (and 0 for NaN)."""
    v = torch.tensor([19.0, np.nextafter(np.float32(20), np.float32(0)), 20.0,
                      np.nextafter(np.float32(20), np.float32(30)), 21.0, -1e30, 1e30,
                      float("nan")], dtype=torch.float32)  # fmt: skip
    slope = torch.empty_like(v)
    _slope_kernel[(1,)](v.to(DEVICE), out := slope.to(DEVICE), v.numel(), BLOCK=16)
    assert out.cpu().tolist() == [1.0, 1.0, 0.5, 0.0, 0.0, 1.0, 0.0, 0.0]
