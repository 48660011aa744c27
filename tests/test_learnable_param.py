"""When a layer checks its learnable parameters' constraints with ``check_finite=True``:
after a change of their versions or addresses (an optimizer step, an in-place op, an
assignment) and after any use of ``.data`` (a write through it moves no version), not on
every call. ``LearnableParameter`` counts the ``.data`` uses; a plain ``nn.Parameter``
swapped in is checked on every call."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import adex
import adex.module
from adex.learnable_param import LearnableParameter

N, B, T = 5, 2, 6


@pytest.fixture
def counted(monkeypatch):
    """The number of constraint checks the layers run (calls of learnable_violations)."""
    calls = [0]
    real = adex.module.learnable_violations

    def counting(values, checks):
        calls[0] += 1
        return real(values, checks)

    monkeypatch.setattr(adex.module, "learnable_violations", counting)
    return calls


def call(layer) -> torch.Tensor:
    x = torch.rand(T, B, N, generator=torch.Generator().manual_seed(3)) * 25.0 + 10.0
    layer.init_state(B)
    out = layer(x.requires_grad_())
    out.sum().backward()
    return out


def make(**kwargs) -> adex.AdExIF:
    return adex.AdExIF(N, dt=0.5, backend="reference", learnable=("tau", "b"), **kwargs)


def test_learnable_parameters_are_learnable_parameters():
    layer = make()
    for p in (layer.tau, layer.b):
        assert type(p) is LearnableParameter and isinstance(p, nn.Parameter)
    assert repr(layer.tau) == repr(nn.Parameter(layer.tau.detach().clone()))
    assert type(copy.deepcopy(layer).tau) is LearnableParameter
    assert type(pickle.loads(pickle.dumps(layer.tau))) is nn.Parameter


def test_unchanged_parameters_are_checked_once(counted):
    layer = make()
    for _ in range(3):
        call(layer)
    assert counted[0] == 1


def test_an_optimizer_step_is_checked(counted):
    layer = make()
    opt = torch.optim.SGD(layer.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        call(layer)
        opt.step()
    assert counted[0] == 3  # the first call, then one after each step before the next call


def test_a_data_use_is_checked_and_a_bad_write_raises(counted):
    layer = make()
    call(layer)
    float(layer.tau.data)  # a read: checked again once
    call(layer)
    call(layer)
    assert counted[0] == 2
    layer.tau.data.fill_(-1.0)  # no version moves
    with pytest.raises(ValueError, match="tau must be"):
        call(layer)


def test_check_finite_false_skips_data_uses(counted):
    layer = make(check_finite=False)
    call(layer)
    float(layer.tau.data)
    call(layer)
    assert counted[0] == 1


def test_a_plain_parameter_is_checked_every_call(counted):
    layer = make()
    layer.tau = nn.Parameter(torch.tensor(6.0))
    for _ in range(3):
        call(layer)
    assert counted[0] == 3
    layer.tau.data.fill_(-1.0)
    with pytest.raises(ValueError, match="tau must be"):
        call(layer)
