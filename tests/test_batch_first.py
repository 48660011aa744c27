"""``batch_first=True``: sequences are ``[batch, T, ...]``; the results equal the
time-first layer's on the transposed data, forward and gradients, on both backends (B == T
included, where a silent misreading would not show in the shapes)."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE

import adex

BACKENDS = ["reference", "triton"]
MODELS = [adex.AdExIF, adex.AdExIFRef, adex.ExpIF, adex.LIF, adex.AdLIF, adex.AdLIFRef]


def _pair(model, backend, **kw):
    tf = model((2, 3), backend=backend, dt=1.0, **kw).to(DEVICE)
    bf = model((2, 3), backend=backend, dt=1.0, batch_first=True, **kw).to(DEVICE)
    return tf, bf


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("B,T", [(3, 5), (4, 4)])
def test_batch_first_matches_time_first(model, backend, B, T):
    g = torch.Generator().manual_seed(B * 10 + T)
    scale = 0.05 if model is adex.LIF else 1.0  # LIF: V_th = 1 mV above rest
    x_bf = (torch.randn(B, T, 2, 3, generator=g) * 20 + 60).mul(scale).to(DEVICE)
    tf, bf = _pair(model, backend, learnable=("tau",))
    for layer in (tf, bf):
        layer.init_state(B)
    xb = x_bf.clone().requires_grad_(True)
    xt = x_bf.transpose(0, 1).contiguous().requires_grad_(True)
    out_b = bf(xb, return_states=True)
    out_t = tf(xt, return_states=True)
    assert out_b.spikes.shape == (B, T, 2, 3)
    assert 0 < out_b.spikes.mean() < 1  # spikes and silent steps both
    for got, want in zip(out_b, out_t, strict=True):
        if want is None:
            assert got is None
            continue
        assert got.shape == (B, T, 2, 3)
        assert torch.equal(got, want.transpose(0, 1))
        assert got.transpose(0, 1).is_contiguous()  # a transposed view, not a copy
    weight = torch.linspace(0.5, 1.5, T, device=DEVICE)
    (out_b.spikes * weight.view(1, T, 1, 1)).sum().add(out_b.V.sum() * 1e-3).backward()
    (out_t.spikes * weight.view(T, 1, 1, 1)).sum().add(out_t.V.sum() * 1e-3).backward()
    torch.testing.assert_close(xb.grad, xt.grad.transpose(0, 1))
    torch.testing.assert_close(bf.tau.grad, tf.tau.grad)
    assert torch.equal(bf.V, tf.V)  # the carried state is [batch, *in_size] in both
    spikes_b = bf(x_bf)  # a second call continues from it
    assert torch.equal(spikes_b, tf(x_bf.transpose(0, 1)).transpose(0, 1))


def test_batch_first_unbatched_state_takes_time_first():
    """As torch.nn.RNN: without a batch dimension the sequence is [T, *in_size]."""
    layer = adex.AdExIF(3, batch_first=True)
    layer.init_state()
    x = torch.rand(7, 3) * 30
    ref = adex.AdExIF(3)
    ref.init_state()
    assert torch.equal(layer(x), ref(x))


def test_layout_errors_name_the_option():
    layer = adex.AdExIF(3)
    layer.init_state(4)
    with pytest.raises(ValueError, match="batch_first=True"):
        layer(torch.rand(4, 9, 3))  # batch-first data given to a time-first layer
    bf = adex.AdExIF(3, batch_first=True)
    bf.init_state(4)
    with pytest.raises(ValueError, match=r"\[batch, T, \*in_size\]"):
        bf(torch.rand(4, 3))
    with pytest.raises(ValueError, match="batch_first=True: the input is"):
        bf(torch.rand(9, 4, 3))
    with pytest.raises(TypeError, match="batch_first must be True or False"):
        adex.LIF(3, batch_first=1)
