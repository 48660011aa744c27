"""Parameters as attributes: ``layer.tau`` reads every parameter (fixed scalar, per-neuron
buffer, learnable) as a tensor in its canonical unit; assigning one takes effect exactly as
constructing the layer with that value would, or raises a clear error."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE

import adex
from adex.params import PARAM_KINDS

u = adex.u
BACKENDS = ["reference", "triton"]


def _run(layer, seed=0):
    g = torch.Generator().manual_seed(seed)
    layer.init_state(2)
    x = (torch.randn(12, 2, 3, generator=g) * 8 + 25).to(DEVICE)
    return layer(x, return_states=True)


@pytest.mark.parametrize("model", [adex.AdExIF, adex.AdExIFRef, adex.ExpIF, adex.ExpIFRef,
                                   adex.LIF, adex.AdLIF, adex.AdLIFRef])  # fmt: skip
def test_every_parameter_reads_in_canonical_units(model):
    layer = model(3)
    params = layer.params
    for name in model.param_names:
        value = getattr(layer, name)
        assert isinstance(value, torch.Tensor), name
        torch.testing.assert_close(value, torch.as_tensor(getattr(params, name),
                                                          dtype=value.dtype))  # fmt: skip
    for name in set(PARAM_KINDS) - set(model.param_names):
        with pytest.raises(AttributeError, match=name):
            getattr(layer, name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "name,value",
    [("tau", 7 * u.ms), ("V_th", -52.0), ("b", torch.linspace(0.2, 2.0, 3)),
     ("a", 0.5 * u.S), ("R", 1.5 * u.ohm)],
)  # fmt: skip
def test_assigning_a_fixed_parameter_takes_effect(backend, name, value):
    layer = adex.AdExIF(3, backend=backend, dt=0.5).to(DEVICE)
    before = _run(layer)
    setattr(layer, name, value)
    fresh = adex.AdExIF(3, backend=backend, dt=0.5, **{name: value}).to(DEVICE)
    got, want = _run(layer), _run(fresh)
    assert torch.equal(got.V, want.V) and torch.equal(got.spikes, want.spikes)
    assert not torch.equal(got.V, before.V)
    torch.testing.assert_close(getattr(layer, name), getattr(fresh, name))


def test_per_neuron_back_to_scalar_and_state_dict():
    layer = adex.AdExIF(3, b=torch.ones(3))
    assert "b" in layer.state_dict()
    layer.b = 2 * u.mA
    assert "b" not in layer.state_dict() and float(layer.b) == 2.0
    with pytest.raises(TypeError, match="tau must be a number, array, tensor or quantity"):
        layer.tau = [5.0, 6.0, 7.0]  # refused as the constructor refuses it
    layer.tau = torch.tensor([5.0, 6.0, 7.0])
    assert torch.equal(
        layer.state_dict()["tau"], torch.tensor([5.0, 6.0, 7.0], dtype=torch.float64)
    )


def test_assigning_a_learnable_parameter_writes_in_place():
    layer = adex.AdExIF(3, tau=torch.full((3,), 10.0), learnable=("tau",), backend="reference")
    param = layer.tau
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer.tau = 12 * u.ms  # broadcast into the per-neuron parameter
    assert layer.tau is param and torch.all(param == 12.0)
    _run(layer).spikes.sum().backward()
    opt.step()  # the optimizer still holds the same tensor
    assert layer.tau is param
    fresh = adex.AdExIF(3, tau=torch.full((3,), 12.0), backend="reference")
    layer2 = adex.AdExIF(3, tau=torch.full((3,), 10.0), learnable=("tau",), backend="reference")
    layer2.tau = 12.0
    assert torch.equal(_run(layer2).V, _run(fresh).V)
    replacement = torch.nn.Parameter(torch.full((3,), 9.0))
    layer2.tau = replacement
    assert layer2.tau is replacement and dict(layer2.named_parameters())["tau"] is replacement


def test_assignment_errors_are_clear_and_change_nothing():
    layer = adex.AdExIF(3, learnable=("b",))
    with pytest.raises(ValueError, match=r"AdExIF.V_th: V_th must be > V_reset"):
        layer.V_th = -70 * u.mV
    assert float(layer.V_th) == -55.0
    with pytest.raises(ValueError, match="tau must be a time quantity"):
        layer.tau = 5 * u.mV
    with pytest.raises(ValueError, match="learnable scalar"):
        layer.b = torch.ones(3)
    with pytest.raises(ValueError, match="is fixed: construct the layer with learnable"):
        layer.tau = torch.nn.Parameter(torch.tensor(5.0))
    with pytest.raises(ValueError, match="does not broadcast"):
        layer.tau = torch.ones(4)
    with pytest.raises(ValueError, match="finite"):
        layer.a = float("nan")
    with pytest.raises(AttributeError, match="has no parameter 'tau_w'"):
        adex.LIF(3).tau_w = 3.0
    assert float(layer.tau) == 10.0
