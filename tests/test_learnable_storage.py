"""Where the learnable parameters live: in the layer's packed parameter buffer.

A layer stores each fp32 learnable parameter in its row of the packed ``[11, N]`` buffer the
kernels read (``param.data`` is a view of the row), so a call packs nothing. These tests pin
what that must never change: every way of writing a parameter is seen by the next call
(optimizer step, ``copy_`` under no_grad, ``.data``, ``load_state_dict``, a swapped-in
parameter, ``torch.func.functional_call``, ``.double()``), an invalid value still raises
(``check_finite=False`` checks the parameters only when their version moved), a backward
after an in-place step is refused as for any saved weight, and copies stay independent.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import assert_close
from torch import nn

import adex

BACKENDS = ("triton", "cpu", "reference")
N, B, T = 5, 2, 12


def inputs(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(T, B, N, generator=g) * 25.0 + 10.0  # mA: a few spikes per neuron


def make(backend: str, learnable=("tau", "b"), **kwargs) -> adex.AdExIF:
    return adex.AdExIF(N, dt=0.5, backend=backend, learnable=learnable, **kwargs)


def run(layer, x) -> torch.Tensor:
    """V of every step from a fixed initial state, no grad."""
    with torch.no_grad():
        layer.init_state(B)
        return layer(x, return_states=True).V


def fresh_equal(layer, x, backend: str, **values) -> None:
    """The layer's run equals a fresh layer's built with ``values`` (and differs from the
    default layer's: the write mattered)."""
    got = run(layer, x)
    want = run(make(backend, learnable=(), **values), x)
    assert_close("V", want, got, 1e-5, 1e-6)
    assert (got - run(make(backend, learnable=()), x)).abs().max() > 1e-3


def test_learnable_parameters_are_views_of_the_packed_buffer():
    layer = make("reference")
    storage = layer._packed.untyped_storage().data_ptr()
    for name in ("tau", "b"):
        p = getattr(layer, name)
        assert isinstance(p, nn.Parameter) and p.is_leaf and p.dtype == torch.float32
        assert p.untyped_storage().data_ptr() == storage
    tau = torch.linspace(8.0, 12.0, N)
    per_neuron = make("reference", learnable=("tau",), tau=tau, V_th=torch.full((N,), -50.0))
    assert per_neuron.tau.shape == (N,)
    packed = per_neuron._packed.untyped_storage().data_ptr()
    assert per_neuron.tau.untyped_storage().data_ptr() == packed


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["no_grad copy_", ".data", "load_state_dict", "optimizer"])
def test_every_write_is_seen_by_the_next_call(backend, how):
    layer = make(backend, check_finite=False)
    x = inputs(1)
    run(layer, x)  # a call before the write: nothing of it may stick
    if how == "no_grad copy_":
        with torch.no_grad():
            layer.tau.copy_(torch.tensor(6.0))
            layer.b.copy_(torch.tensor(3.0))
    elif how == ".data":
        layer.tau.data.fill_(6.0)
        layer.b.data.fill_(3.0)
    elif how == "load_state_dict":
        layer.load_state_dict({"tau": torch.tensor(6.0), "b": torch.tensor(3.0)})
    else:
        opt = torch.optim.SGD(layer.parameters(), lr=1.0)
        layer.tau.grad = torch.tensor(4.0)  # 10 - 4
        layer.b.grad = torch.tensor(-2.0)  # 1 + 2
        opt.step()
    fresh_equal(layer, x, backend, tau=6.0, b=3.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_swapped_in_parameter_is_used_and_gets_the_gradient(backend):
    layer = make(backend)
    old = layer.tau
    run(layer, inputs(2))
    layer.tau = nn.Parameter(torch.tensor(6.0))
    x = inputs(2)
    fresh_equal(layer, x, backend, tau=6.0)
    assert float(old) == 10.0  # the old parameter is left alone
    layer.init_state(B)
    layer(x.clone().requires_grad_()).sum().backward()
    assert layer.tau.grad is not None and layer.tau.grad.abs() > 0
    assert old.grad is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_call_uses_the_given_values_without_rebinding_them(backend):
    layer = make(backend)
    x = inputs(3)
    tau = torch.tensor(6.0, requires_grad=True)
    ptr = tau.data_ptr()
    layer.init_state(B)
    out = torch.func.functional_call(layer, {"tau": tau}, (x,))
    out.sum().backward()
    assert tau.data_ptr() == ptr and float(tau) == 6.0
    assert tau.grad is not None and tau.grad.abs() > 0
    assert float(layer.tau) == 10.0
    with torch.no_grad():
        fresh = make(backend, learnable=(), tau=6.0)
        fresh.init_state(B)
        assert_close("spikes", fresh(x), out.detach(), 0.0, 0.0)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_double_layer_runs_with_its_current_values(backend):
    layer = make(backend).double()
    assert layer.tau.dtype == torch.float64
    with torch.no_grad():
        layer.tau.fill_(6.0)
    x = inputs(4).double()
    got = run(layer, x)
    want = run(make(backend, learnable=(), tau=6.0).double(), x)
    assert_close("V", want, got, 1e-12, 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scalar_learnable_among_per_neuron_values(backend):
    """A scalar learnable parameter of a layer with per-neuron values (not a whole row)."""
    v_th = torch.linspace(-52.0, -48.0, N)
    layer = make(backend, learnable=("tau",), V_th=v_th)
    x = inputs(5)
    run(layer, x)
    with torch.no_grad():
        layer.tau.fill_(6.0)
    got = run(layer, x)
    want = run(make(backend, learnable=(), V_th=v_th, tau=6.0), x)
    assert_close("V", want, got, 1e-5, 1e-6)


def test_optimizer_made_before_float_still_drives_the_layer():
    layer = make("triton")
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer.float()  # .to(): the buffer is rebuilt and the parameters rebound, same objects
    layer.tau.grad = torch.tensor(4.0)
    layer.b.grad = torch.tensor(-2.0)
    opt.step()
    fresh_equal(layer, inputs(6), "triton", tau=6.0, b=3.0)


def test_deepcopy_is_independent():
    layer = make("triton")
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        twin.tau.fill_(6.0)
        twin.b.fill_(3.0)
    x = inputs(7)
    fresh_equal(twin, x, "triton", tau=6.0, b=3.0)
    assert float(layer.tau) == 10.0
    assert_close("V", run(make("triton", learnable=()), x), run(layer, x), 0.0, 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("check_finite", [False, True])
def test_invalid_value_after_a_step_raises(backend, check_finite):
    layer = make(backend, check_finite=check_finite)
    x = inputs(8)
    run(layer, x)
    run(layer, x)  # a checked, unchanged parameter: (check_finite=False) not checked again
    with torch.no_grad():
        layer.tau.fill_(-1.0)
    with pytest.raises(ValueError, match="tau must be"):
        run(layer, x)
    with pytest.raises(ValueError, match="tau must be"):  # still refused: never recorded
        run(layer, x)
    with torch.no_grad():
        layer.tau.fill_(6.0)
    fresh_equal(layer, x, backend, tau=6.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_data_write_is_checked_with_check_finite(backend):
    """``.data`` bypasses the version counter; with check_finite (the default) every call
    checks the learnable parameters anyway."""
    layer = make(backend)
    x = inputs(9)
    run(layer, x)
    layer.tau.data.fill_(-1.0)
    with pytest.raises(ValueError, match="tau must be"):
        run(layer, x)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_backward_after_an_in_place_step_is_refused(backend):
    """The forward read the parameters from the buffer that holds them; a step before the
    backward would change what the backward reads: refused, as for a saved weight (the CPU
    kernels read a copy: see the next test)."""
    layer = make(backend)
    layer.init_state(B)
    loss = layer(inputs(10).requires_grad_()).sum()
    with torch.no_grad():
        layer.tau.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_cpu_backward_after_an_in_place_step_uses_the_forward_values():
    x = inputs(11)
    grads = []
    for step in (False, True):
        layer = make("cpu")
        layer.init_state(B)
        loss = layer(x).sum()
        if step:
            with torch.no_grad():
                layer.tau.add_(1.0)
        loss.backward()
        grads.append((layer.tau.grad, layer.b.grad))
    assert grads[0][0].abs() > 0
    for g0, g1 in zip(*grads, strict=True):
        assert torch.equal(g0, g1)


def test_assignments_keep_the_parameters_in_the_buffer():
    """Assigning a fixed parameter (a repack: a new buffer) or a learnable one through its
    attribute keeps the learnable parameters in the buffer the kernels read."""
    layer = make("triton")
    x = inputs(12)
    layer.V_th = -50.0  # fixed: repacked into a new buffer
    layer.tau = 6.0  # learnable: written in place
    packed = layer._packed.untyped_storage().data_ptr()
    assert layer.tau.untyped_storage().data_ptr() == packed
    assert layer.b.untyped_storage().data_ptr() == packed
    with torch.no_grad():
        layer.b.fill_(3.0)
    fresh_equal(layer, x, "triton", V_th=-50.0, tau=6.0, b=3.0)
    layer.b = nn.Parameter(torch.tensor(2.0))  # a new parameter through the attribute
    assert layer.b.untyped_storage().data_ptr() == layer._packed.untyped_storage().data_ptr()
    fresh_equal(layer, x, "triton", V_th=-50.0, tau=6.0, b=2.0)


@pytest.mark.parametrize("layout", ["shared", "copied"])
def test_the_constraint_check_records_no_graph(layout):
    """The per-call constraint check reads the packed values, which never require grad
    (the buffer itself, or its copy made without a graph): it adds no autograd node."""
    tau = 10.0 if layout == "shared" else torch.full((4,), 10.0, dtype=torch.float64)
    layer = adex.AdExIF(4, tau=tau, learnable=("tau", "b"), backend="reference")
    assert (layer._rt.shared is not None) == (layout == "shared")
    packed, violations = layer._packed_for_call(True)
    assert not packed.values.requires_grad
    assert violations is not None and violations.grad_fn is None
    assert not violations.requires_grad and torch.isfinite(violations)
