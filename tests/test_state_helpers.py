"""Model-wide state helpers (``adex.init_state`` / ``reset_state`` / ``detach_state``) and
the layer's ``detach_state``: truncated BPTT over chunks, ``nn.Sequential`` training with one
line per batch. Both backends (Triton through the interpreter on CPU: small shapes)."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE
from torch import nn

import adex

BACKENDS = ["reference", "triton"]
MODELS = [adex.AdExIF, adex.AdExIFRef, adex.ExpIF, adex.LIF, adex.AdLIF, adex.AdLIFRef]


def _x(T, B, N, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, B, N, generator=g) * 5 + 20).to(DEVICE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", MODELS)
def test_tbptt_second_chunk_backward(model, backend):
    """Chunk 2's backward works after detach_state, and its gradient is the gradient of a
    run started from chunk 1's final state as a constant."""
    layer = model(3, backend=backend, dt=0.5).to(DEVICE)
    layer.init_state(2)
    x1 = _x(6, 2, 3, 0).requires_grad_(True)
    layer(x1).sum().backward()
    V_mid = layer.V.detach().clone()
    layer.detach_state()
    assert torch.equal(layer.V, V_mid) and not layer.V.requires_grad
    x2 = _x(6, 2, 3, 1).requires_grad_(True)
    out = layer(x2, return_states=True)
    (out.spikes.sum() + out.V.sum()).backward()  # no "backward through the graph twice"

    other = model(3, backend=backend, dt=0.5).to(DEVICE)
    other.init_state(2)
    with torch.no_grad():
        other(x1)
    x2b = x2.detach().clone().requires_grad_(True)
    out_b = other(x2b, return_states=True)
    (out_b.spikes.sum() + out_b.V.sum()).backward()
    assert torch.equal(out.spikes, out_b.spikes)
    torch.testing.assert_close(x2.grad, x2b.grad)


def test_tbptt_without_detach_fails_clearly_documented():
    """Without detach_state the carried state keeps chunk 1's graph (PyTorch's error on a
    second backward): the helper is what makes the loop work."""
    layer = adex.AdExIF(3, backend="reference")
    layer.init_state(2)
    layer(_x(4, 2, 3, 0).requires_grad_(True)).sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        layer(_x(4, 2, 3, 1)).sum().backward()


def test_detach_state_keeps_clock_and_refractory_time():
    layer = adex.AdExIFRef(3, backend="reference")
    layer.init_state(2)
    layer(_x(8, 2, 3, 0) + 20)
    t_last = layer.last_spike_time.clone()
    layer.detach_state()
    assert layer.t_step == 8
    assert torch.equal(layer.last_spike_time, t_last)


def test_detach_state_without_state_is_a_no_op():
    layer = adex.LIF(3)
    layer.detach_state()
    assert layer.V is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequential_trains_with_model_wide_helpers(backend):
    """nn.Sequential(Linear, AdExIF, Linear, LIF): one adex.init_state per batch, TBPTT
    chunks with adex.detach_state; the loss decreases and every layer's state is set."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(4, 6), adex.AdExIF(6, backend=backend, dt=1.0, learnable=("tau",)),
        nn.Linear(6, 2), adex.LIF(2, backend=backend, dt=1.0),
    ).to(DEVICE)  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    x = (torch.rand(8, 3, 4) * 40).to(DEVICE)
    target = torch.zeros(8, 3, 2, device=DEVICE)
    losses = []
    for _ in range(3):
        adex.init_state(net, batch_size=3)
        for chunk in x.split(4):
            loss = (net(chunk) - target[: len(chunk)]).pow(2).mean() + net[0].weight.pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            adex.detach_state(net)
            losses.append(float(loss.detach()))
    assert all(layer.V.shape == (3, layer.in_size[0]) for layer in (net[1], net[3]))
    assert losses[-1] < losses[0]


def test_model_wide_init_and_reset_state():
    net = nn.Sequential(adex.AdExIF(3), nn.ReLU(), nn.Sequential(adex.ExpIFRef(3)))
    adex.init_state(net, batch_size=5, dtype=torch.float64)
    layers = adex.state.spiking_layers(net)
    assert len(layers) == 2
    assert all(la.V.shape == (5, 3) and la.V.dtype == torch.float64 for la in layers)
    net[0].V = torch.zeros(5, 3)
    adex.reset_state(net)  # unbatched now
    assert net[0].V.shape == (3,) and torch.all(net[0].V == -65.0)
    assert net[2][0].t_step == 0


def test_model_wide_helpers_reject_wrong_input():
    with pytest.raises(ValueError, match="contains no adex layer"):
        adex.init_state(nn.Linear(2, 2), batch_size=2)
    with pytest.raises(ValueError, match="contains no adex layer"):
        adex.detach_state(nn.Sequential(nn.ReLU()))
    with pytest.raises(TypeError, match=r"nn\.Module"):
        adex.init_state([adex.LIF(2)])
    with pytest.raises(ValueError, match="batch_size"):
        adex.init_state(adex.LIF(2), batch_size=0)
