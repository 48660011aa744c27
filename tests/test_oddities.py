"""Inputs that used to pass without a word: each is now a clear error or a documented,
tested behaviour (R = 0, a negative surrogate scale, a coarse dt, float64 input, integer
input currents, the benchmark script on a machine without CUDA)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import adex
from adex import surrogate

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("model", [adex.AdExIF, adex.ExpIF, adex.LIF])
def test_zero_resistance_is_refused(model):
    with pytest.raises(ValueError, match="R must be non-zero"):
        model(3, R=0 * adex.u.ohm)
    with pytest.raises(ValueError, match="R must be non-zero"):
        model(3, R=torch.tensor([1.0, 0.0, 2.0]))
    layer = model(3)
    with pytest.raises(ValueError, match="R must be non-zero"):
        layer.R = 0.0
    layer.R = -2.0  # a negative resistance is a sign convention, not a no-op: accepted
    assert float(layer.R) == -2.0


@pytest.mark.parametrize(
    "make,match",
    [(lambda: surrogate.Sigmoid(alpha=-4), "alpha must be finite and > 0"),
     (lambda: surrogate.ReluGrad(width=0.0), "width must be finite and > 0"),
     (lambda: surrogate.Arctan(alpha=math.nan), "alpha must be finite"),
     (lambda: surrogate.GaussianGrad(sigma=-0.5), "sigma must be finite and > 0"),
     (lambda: surrogate.LeakyRelu(alpha=-0.1), "alpha must be finite and >= 0"),
     (lambda: surrogate.Sigmoid(alpha="4"), "alpha must be a real number")],
)  # fmt: skip
def test_invalid_surrogate_hyper_parameters(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_surrogate_zero_where_meaningful_and_numpy_numbers():
    assert surrogate.LogTailedRelu(alpha=0.0).alpha == 0.0
    assert surrogate.PiecewiseLeakyRelu(c=0.0).c == 0.0
    assert surrogate.Sigmoid(alpha=np.float32(2.0)).alpha == 2.0


def test_coarse_dt_warns_at_construction_and_assignment():
    with pytest.warns(UserWarning, match=r"dt = 1000 ms is longer than tau = 10 ms"):
        adex.AdExIF(3, dt=1000 * adex.u.ms)
    with pytest.warns(UserWarning, match=r"longer than tau_w = 2 ms"):
        adex.AdExIF(3, tau_w=torch.tensor([2.0, 30.0, 30.0]), dt=5.0, tau=20.0)
    layer = adex.LIF(3)  # tau = 5 ms
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer.dt = 5.0  # equal to tau: no warning
    with pytest.warns(UserWarning, match="dt = 6 ms"):
        layer.dt = 6.0
    assert layer.dt == 6.0  # a warning, not an error: the step stays stable


def test_float64_input_runs_the_state_in_float64():
    """Documented: float64 input (or state) selects the reference's float64 path; the
    state the layer keeps is then float64, and it equals the float64 reference."""
    layer = adex.AdExIF(3, backend="reference")
    layer.init_state(2)
    x = torch.rand(20, 2, 3, dtype=torch.float64) * 40
    spikes = layer(x)
    assert spikes.dtype == torch.float64 and layer.V.dtype == torch.float64
    out = adex.adex_scan_reference(
        x, torch.full((2, 3), -65.0, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64),
        layer.params, dt=layer.dt, surrogate=layer.spk_fun,
    )  # fmt: skip
    assert torch.equal(spikes, out[0]) and torch.equal(layer.V, out[1][-1])
    layer(x.float())  # a float32 call after it stays float64 (the state's dtype)
    assert layer.V.dtype == torch.float64


def test_integer_input_currents_are_numbers():
    layer = adex.AdExIF(3)
    layer.init_state(2)
    a = layer.update(3)
    layer.init_state(2)
    b = layer.update(3.0)
    layer.init_state(2)
    c = layer.update(np.array([3, 3, 3]))
    assert a.dtype == torch.float32 and torch.equal(a, b) and torch.equal(a, c)
    with pytest.raises(TypeError, match="floating-point tensor"):  # tensors keep their dtype
        layer.update(torch.tensor(3))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_roofline_without_cuda_exits_2_like_adex_bench():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "benchmarks/roofline.py"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stdout


def test_smoke_run_writes_outside_the_checkout():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import roofline
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    smoke = Path(roofline.parse_args(["--interpret-smoke"]).out).resolve()
    assert ROOT not in smoke.parents
    smoke.rmdir()  # created empty by parse_args
    assert roofline.parse_args([]).out == "benchmarks/results"
