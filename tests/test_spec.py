"""``adex.spec.ScanSpec``: validated once, hashable, carried by the custom ops as its key;
the layers' settings are views of it and re-validate when assigned."""

from __future__ import annotations

import math

import pytest
import torch

import adex
from adex import surrogate as sg
from adex.spec import ScanSpec, spec_for_call

SURROGATES = [getattr(sg, name)() for name in sg.__all__ if name != "Surrogate"]


@pytest.mark.parametrize("surrogate", SURROGATES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize(
    "settings",
    [
        dict(),
        dict(has_w=False, has_exp=False, spk_reset="hard", dt=0.25, detach_reset=True),
        dict(tau_ref=1.7, spike_dtype=torch.uint8, checkpoint_every=7, check_finite=False),
        dict(has_w=False, tau_ref=0.0, spike_dtype=torch.bfloat16, backend="triton"),
        dict(return_states=True, dt=1e-3, backend="reference"),
    ],
)
def test_key_round_trip(surrogate, settings):
    """The string the custom ops carry rebuilds an equal spec (same hash, same kernel
    arguments)."""
    spec = ScanSpec(surrogate=surrogate, **settings)
    back = ScanSpec.from_key(spec.key)
    assert back == spec and hash(back) == hash(spec) and back.key == spec.key
    assert back.kernel_flags == spec.kernel_flags
    assert back.kernel_scalars == spec.kernel_scalars
    for needs_grad, param_grad in ((False, False), (True, False), (True, True)):
        assert back.plan(needs_grad, param_grad) == spec.plan(needs_grad, param_grad)


def test_equal_settings_share_one_spec():
    a = spec_for_call(dt=0.1, surrogate=sg.Sigmoid(alpha=2.0), has_w=True)
    b = spec_for_call(dt=0.1, surrogate=sg.Sigmoid(alpha=2.0), has_w=True)
    assert a is b  # validated once
    assert a != spec_for_call(dt=0.1, surrogate=sg.Sigmoid(alpha=3.0), has_w=True)
    assert len({a, ScanSpec(dt=0.1, surrogate=sg.Sigmoid(alpha=2.0))}) == 1


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        (dict(dt=0.0), ValueError, "dt"),
        (dict(dt=math.nan), ValueError, "dt"),
        (dict(dt=True), ValueError, "dt"),
        (dict(tau_ref=-1.0), ValueError, "tau_ref"),
        (dict(tau_ref=math.inf), ValueError, "tau_ref"),
        (dict(spk_reset="none"), ValueError, "spk_reset"),
        (dict(backend="cuda"), ValueError, "backend"),
        (dict(surrogate=torch.sigmoid), TypeError, "surrogate"),
        (dict(spike_dtype=torch.int32), TypeError, "spike_dtype"),
        (dict(checkpoint_every=0), ValueError, "checkpoint_every"),
        (dict(checkpoint_every=4, return_states=True), ValueError, "return_states"),
    ],
)
def test_invalid_settings_raise(settings, error, match):
    with pytest.raises(error, match=match):
        ScanSpec(**settings)


def test_plans():
    """What a call writes, by whether a gradient is needed."""
    spec = ScanSpec(tau_ref=1.0, checkpoint_every=4)
    assert spec.n_state == 3 and spec.w_row == 1 and spec.t_row == 2
    nograd, grad, params = spec.plan(False, False), spec.plan(True, False), spec.plan(True, True)
    assert (
        not (nograd.store_v or nograd.store_w or nograd.store_ref) and nograd.checkpoint_every == 0
    )
    assert grad.checkpoint_every == 4 and not grad.store_v and not grad.store_ref
    assert params.param_grad and not params.store_w  # recomputed in the backward
    plain = ScanSpec(has_w=False)
    assert plain.plan(True, False).store_v and not plain.plan(True, True).store_w
    assert ScanSpec().plan(True, True).store_w  # the tau_w gradient reads w'
    states = ScanSpec().with_return_states(True)
    assert states.plan(False, False).store_v and states.plan(False, False).store_w


def test_surrogate_hyper_parameters_are_fixed():
    s = sg.Sigmoid(alpha=2.0)
    with pytest.raises(AttributeError, match="fixed at construction"):
        s.alpha = 3.0
    assert s.params[0] == 2.0


def test_layer_settings_revalidate_and_take_effect():
    """Assigning a layer's setting rebuilds (and validates) its spec: the next call runs as
    a layer built with that setting would."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(60, 2, 5, generator=gen) * 30 + 20
    layer = adex.AdExIF(5, backend="reference")
    with pytest.raises(ValueError, match="dt"):
        layer.dt = -1.0
    with pytest.raises(ValueError, match="spk_reset"):
        layer.spk_reset = "none"
    layer.dt = 0.2 * adex.u.ms
    layer.spk_reset = "hard"
    layer.spk_fun = sg.Arctan(alpha=2.0)
    assert layer.dt == 0.2 and layer.spk_reset == "hard"
    fresh = adex.AdExIF(5, backend="reference", dt=0.2, spk_reset="hard",
                        spk_fun=sg.Arctan(alpha=2.0))  # fmt: skip
    outs = []
    for lay in (layer, fresh):
        lay.init_state(2)
        outs.append((lay(x), lay.V))
    assert outs[0][0].sum() > 0
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    with pytest.raises(AttributeError, match="refractory"):
        layer.tau_ref = 1.0
