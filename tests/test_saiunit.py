"""saiunit quantities (BrainPy's own units) wherever a pint quantity is accepted:
parameters, dt, tau_ref, initializers, input currents (``forward`` and ``update``), state
and parameter assignment; the same results as pint, the same dimension errors. adex reads
them by duck typing and never imports saiunit itself."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import adex

su = pytest.importorskip("saiunit")  # in the test extra
u = adex.u


def test_layer_from_saiunit_equals_pint():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, 3, generator=g) * 5 + 25
    sai = adex.AdExIFRef(
        3, tau=12 * su.ms, tau_w=su.Quantity(np.array([20.0, 30.0, 40.0]), unit=su.ms),
        tau_ref=1.5 * su.ms, V_th=-52 * su.mV, a=2e-3 * su.siemens, b=500 * su.uA,
        R=su.Quantity(torch.tensor(1.5), unit=su.ohm), dt=0.25 * su.ms,
        V_initializer=adex.init.Uniform(-66 * su.mV, -60 * su.mV),
        w_initializer=adex.init.Constant(0.1 * su.mA), backend="reference",
    )  # fmt: skip
    pint_ = adex.AdExIFRef(
        3, tau=12 * u.ms, tau_w=np.array([20.0, 30.0, 40.0]) * u.ms, tau_ref=1.5 * u.ms,
        V_th=-52 * u.mV, a=2e-3 * u.S, b=500 * u.uA, R=1.5 * u.ohm, dt=0.25 * u.ms,
        V_initializer=adex.init.Uniform(-66 * u.mV, -60 * u.mV),
        w_initializer=adex.init.Constant(0.1 * u.mA), backend="reference",
    )  # fmt: skip
    for layer in (sai, pint_):
        torch.manual_seed(3)
        layer.init_state(2)
    assert torch.equal(sai.V, pint_.V)
    out_s = sai(x * su.mA, return_states=True)
    out_p = pint_(x * u.mA, return_states=True)
    torch.testing.assert_close(out_s.V, out_p.V, rtol=1e-6, atol=1e-5)
    assert torch.equal(out_s.spikes, out_p.spikes)
    step_s = sai.update(su.Quantity(x[0] * 1000, unit=su.uA))
    step_p = pint_.update(x[0] * u.mA)
    assert torch.equal(step_s, step_p)
    assert float(sai.dt) == pytest.approx(0.25) and sai.tau_ref == pytest.approx(1.5)


def test_saiunit_input_keeps_the_gradient():
    layer = adex.AdExIF(3, backend="reference")
    layer.init_state(2)
    x = (torch.rand(10, 2, 3) * 40).requires_grad_(True)
    layer(su.Quantity(x * 1000, unit=su.uA)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_saiunit_assignment_and_bare_units():
    layer = adex.AdExIF(3, dt=su.ms)  # a bare unit means one of it
    assert layer.dt == 1.0
    layer.dt = 0.5 * su.ms
    layer.tau = 7000 * su.us
    assert float(layer.tau) == pytest.approx(7.0)
    layer.init_state(2)
    layer.V = su.Quantity(torch.full((2, 3), -0.06), unit=su.volt)
    assert torch.allclose(layer.V, torch.full((2, 3), -60.0))


def test_saiunit_dimension_errors():
    with pytest.raises(ValueError, match=r"tau must be a time quantity \(convertible to ms\)"):
        adex.AdExIF(3, tau=10 * su.mV)
    with pytest.raises(ValueError, match="V_initializer: Constant must be a voltage quantity"):
        adex.AdExIF(3, V_initializer=adex.init.Constant(3 * su.ms))
    with pytest.raises(ValueError, match="dt must be a time quantity"):
        adex.LIF(3, dt=0.1 * su.mV)
    layer = adex.LIF(3)
    layer.init_state(1)
    with pytest.raises(ValueError, match="x_seq must be a current quantity"):
        layer(su.Quantity(torch.ones(4, 1, 3), unit=su.mV))
    with pytest.raises(ValueError, match="x must be a current quantity"):
        layer.update(2 * su.ms)


def test_adex_does_not_import_saiunit():
    code = "import sys, adex; adex.AdExIF(3); print('saiunit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)  # fmt: skip
    assert out.stdout.strip() == "False"
