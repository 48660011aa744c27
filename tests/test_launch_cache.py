"""The launchers' cache of the arguments that a plan and a launch's geometry fix
(``Plan.launch``, ``adex.kernels.launch.remember``): a layer called at changing batch sizes
and check settings gives what a fresh layer gives at each, bit for bit, and the cache stays
bounded."""

from __future__ import annotations

import math

import pytest
import torch

import adex
from adex.kernels import launch

pytestmark = pytest.mark.skipif(not adex.HAS_TRITON, reason="needs triton")

T, N = 6, 5


def _x(batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, batch, N, generator=g) * 8 + 22


def _training_call(layer: adex.AdExIF, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """init_state, forward, backward of a weighted sum: spikes, final V, x's and tau's
    gradients."""
    layer.init_state(x.shape[1])
    x = x.clone().requires_grad_(True)
    spikes = layer(x, return_states=True)
    weights = torch.linspace(0.5, 1.5, spikes.V.numel()).view_as(spikes.V)
    ((spikes.spikes * 3 + spikes.V * weights).sum()).backward()
    tau_grad = layer.tau.grad.clone()
    layer.tau.grad = None
    return spikes.spikes.detach(), spikes.V.detach(), x.grad, tau_grad


def _layer() -> adex.AdExIF:
    return adex.AdExIF(N, backend="triton", learnable=("tau",), V_initializer=-60.0)


@pytest.mark.parametrize("batches", [(3, 7, 3, 1, 7), (2, 2, 9)])
def test_changing_geometry_matches_fresh_layers(batches):
    reused = _layer()
    for i, batch in enumerate(batches):
        x = _x(batch, seed=i)
        got, want = _training_call(reused, x), _training_call(_layer(), x)
        for name, g, w in zip(("spikes", "V", "grad_x", "grad_tau"), got, want, strict=True):
            assert torch.equal(g, w), f"batch {batch} (call {i}): {name} differs"


def test_cache_is_bounded_and_refills(monkeypatch):
    monkeypatch.setattr(launch, "CACHED_LAUNCHES", 2)
    reused = _layer()
    for i, batch in enumerate((1, 2, 3, 4, 2, 1)):
        x = _x(batch, seed=10 + i)
        got, want = _training_call(reused, x), _training_call(_layer(), x)
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w), f"batch {batch} (call {i})"
        sizes = [len(plan.launch) for plan in reused._spec_states._plans]
        assert max(sizes) == 2 or (i == 0 and max(sizes) > 0), sizes


def test_state_check_follows_an_assigned_state():
    """A trusted state's launch skips the state check; the next launch, on an assigned
    non-finite state at the same geometry, must still run it (the checks are in the key)."""
    layer = adex.AdExIF(N, backend="triton", check_finite=True)
    layer.init_state(3)
    with torch.no_grad():
        layer(_x(3, seed=0))  # a trusted state: the state check is off
        V = layer.V.clone()
        V[1, 2] = math.nan
        layer.V = V
        with pytest.raises(ValueError, match="V"):
            layer(_x(3, seed=1))
        layer.V = V.nan_to_num(-60.0)
        layer(_x(3, seed=2))  # finite again: runs
