"""``adex.LI``, the non-spiking leaky-integrator readout: equal to a LIF that never reaches
its threshold (forward and gradients), fused vs reference, the synapse, the state API."""

from __future__ import annotations

import pytest
import torch

import adex
from tests.helpers import assert_close

T, B, N = 8, 2, 3


def _inputs(seed=0):
    torch.manual_seed(seed)
    x = (torch.rand(T, B, N) * 10 - 3).requires_grad_()
    V0 = (torch.rand(B, N) * 4 - 2).requires_grad_()
    return x, V0


def _grads(layer, x, V0, V_seq):
    torch.manual_seed(9)
    loss = (V_seq * torch.rand(V_seq.shape)).sum() + layer.V.pow(2).sum() * 0.1
    tensors = [x, V0] + [getattr(layer, k) for k in layer.learnable]
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("tau_syn", [None, 2.0])
def test_li_equals_never_spiking_lif(backend, tau_syn):
    tau = torch.rand(N, dtype=torch.float64) * 5 + 2  # per-neuron, ms
    kw = dict(tau=tau, R=1.5, V_rest=-1.0, dt=0.5, backend=backend, tau_syn=tau_syn,
              learnable=("tau", "R", "V_rest"))  # fmt: skip
    li = adex.LI(N, **kw)
    # a threshold 1000 mV away with a 1 mV reset: never reached, and ReluGrad(width=1) is
    # zero there, so the LIF's reset passes no gradient either
    lif = adex.LIF(N, V_th=999.0, V_reset=998.0, **kw)
    outs = []
    for layer in (li, lif):
        layer.init_state(B)
        x, V0 = _inputs()
        layer.V = V0
        out = layer(x) if layer is li else layer(x, return_states=True).V
        assert out.shape == (T, B, N)
        outs.append((out, _grads(layer, x, V0, out)))
    (V_li, g_li), (V_lif, g_lif) = outs
    assert_close("V", V_lif, V_li, 1e-6, 1e-6)
    assert V_li.detach().abs().max() > 1.0  # it moved
    for a, b in zip(g_li, g_lif, strict=True):
        assert_close("grad", b, a, 1e-6 * b.abs().max().item(), 1e-6)


@pytest.mark.parametrize("tau_syn", [None, 1.5])
def test_li_fused_matches_reference(tau_syn):
    res = []
    learn = ("tau", "R") + (("tau_syn",) if tau_syn else ())
    for backend in ("reference", "triton"):
        li = adex.LI(N, tau=4.0, dt=0.5, tau_syn=tau_syn, backend=backend, learnable=learn)
        li.init_state(B)
        x, V0 = _inputs(1)
        li.V = V0
        V = li(x)
        res.append((V, _grads(li, x, V0, V)))
    (Va, ga), (Vb, gb) = res
    assert_close("V", Va, Vb, 1e-5, 1e-5)
    for a, b in zip(ga, gb, strict=True):
        assert_close("grad", a, b, 1e-5 * a.abs().max().item(), 1e-5)


def test_li_exact_solution_and_api():
    """A constant input from rest: V_t = V_rest + R x (1 - exp(-t dt/tau)) (exact step)."""
    li = adex.LI(1, tau=4 * adex.u.ms, R=2.0, V_rest=-3 * adex.u.mV, dt=0.5, backend="reference")
    li.init_state()
    li.V = torch.full((1,), -3.0, dtype=torch.float64)
    V = li(torch.full((40, 1), 5.0, dtype=torch.float64))
    t = torch.arange(1, 41, dtype=torch.float64)[:, None] * 0.5
    assert_close("V", -3.0 + 10.0 * (1 - torch.exp(-t / 4.0)), V, 1e-12)
    assert V.max() > adex.LIF(1).params.V_th  # a LIF's threshold means nothing here
    step = li.update(torch.full((1,), 5.0, dtype=torch.float64))
    assert torch.equal(step, li.V)
    states = li(torch.zeros(3, 1), return_states=True)
    assert states.spikes.sum() == 0 and states.w is None
    with pytest.raises(ValueError, match="V_th"):
        adex.LI(1, learnable=("V_th",))
    with pytest.raises(ValueError, match="tau"):
        adex.LI(1, tau=0.0)
