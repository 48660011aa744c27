"""The synaptic current (``tau_syn=``): fused kernels vs the reference on every model, the
identity with a pre-filtered input, float64 gradcheck, state handling and bad input."""

from __future__ import annotations

import math

import pytest
import torch

import adex
from adex.params import AdExParams
from adex.reference import synapse_reference
from tests.helpers import assert_close

T, B, N = 9, 2, 3
MODELS = (adex.AdExIF, adex.AdExIFRef, adex.ExpIF, adex.ExpIFRef, adex.LIF, adex.AdLIF,
          adex.AdLIFRef)  # fmt: skip
# inputs (mA) that make each model spike a few times at dt = 0.5 ms
SCALE = {adex.LIF: 6.0, adex.ExpIF: 40.0, adex.ExpIFRef: 40.0, adex.AdLIF: 70.0,
         adex.AdLIFRef: 70.0}  # fmt: skip


def _layer(cls, backend, *, learnable=("tau", "tau_syn"), **kw):
    torch.manual_seed(3)
    tau_syn = torch.rand(N, dtype=torch.float64) * 3 + 0.5  # per-neuron, ms
    kw.setdefault("dt", 0.5)
    layer = cls(N, tau_syn=tau_syn, learnable=learnable, backend=backend, **kw)
    layer.init_state(B)
    return layer


def _run(cls, backend, x_dtype=torch.float32, chunks=1, **kw):
    """One training step: spikes, V and I sequences, final state, gradients of x, of the
    initial V, w and I and of the learnable parameters."""
    layer = _layer(cls, backend, **kw)
    torch.manual_seed(5)
    x = (torch.rand(T, B, N) * SCALE.get(cls, 25.0)).to(x_dtype).requires_grad_()
    near = (layer.params.V_th - layer.V) * (0.6 + 0.4 * torch.rand(B, N))  # near threshold
    V0 = (layer.V + near).requires_grad_()
    I0 = (torch.rand(B, N) * 3).requires_grad_()
    layer.V, layer.I = V0, I0
    leaves = {"x": x, "V0": V0, "I0": I0}
    if layer.has_w:
        leaves["w0"] = layer.w0 = (torch.rand(B, N) * 2).requires_grad_()
        layer.w = leaves["w0"]
    states = kw.get("checkpoint_every") is None
    spikes, V, I = [], [], []
    for xc in x.chunk(chunks):
        out = layer(xc, return_states=states)
        if states:
            spikes.append(out.spikes), V.append(out.V), I.append(out.I)
        else:
            spikes.append(out)
    spikes = torch.cat(spikes)
    torch.manual_seed(7)
    loss = (spikes.float() * torch.rand(spikes.shape)).sum() + layer.V.sum() * 0.1
    loss = loss + layer.I.pow(2).sum() * 0.1
    if states:
        loss = loss + torch.cat(I).sin().sum() + torch.cat(V).mean()
    names = list(leaves) + list(layer.learnable)
    tensors = list(leaves.values()) + [getattr(layer, k) for k in layer.learnable]
    grads = torch.autograd.grad(loss, tensors)
    out = {"spikes": spikes, "V_final": layer.V, "I_final": layer.I}
    if states:
        out.update(V=torch.cat(V), I=torch.cat(I))
    return out, dict(zip(names, grads, strict=True))


def _compare(a, b, atol=2e-4, rtol=2e-4):
    (out_a, g_a), (out_b, g_b) = a, b
    for k in out_a:
        assert_close(k, out_a[k], out_b[k], atol, rtol)
    for k in g_a:
        scale = g_a[k].abs().max().item() + 1e-6
        assert_close(f"grad {k}", g_a[k], g_b[k], atol * scale, rtol)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("spk_reset", ["soft", "hard"])
def test_fused_matches_reference(cls, spk_reset, backend):
    ref = _run(cls, "reference", spk_reset=spk_reset)
    assert ref[0]["spikes"].sum() > 0  # the case exercises spikes and resets
    _compare(ref, _run(cls, backend, spk_reset=spk_reset))


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("cls", [adex.AdExIF, adex.LIF], ids=lambda c: c.__name__)
def test_fused_matches_reference_checkpointed_and_chunked(cls, backend):
    ref = _run(cls, "reference", chunks=2)
    _compare(ref, _run(cls, backend, chunks=2))
    ref = _run(cls, "reference", checkpoint_every=4)
    _compare(ref, _run(cls, backend, checkpoint_every=4))


def test_fused_matches_reference_bf16():
    ref = _run(adex.AdExIF, "reference", x_dtype=torch.bfloat16)
    _compare(ref, _run(adex.AdExIF, "triton", x_dtype=torch.bfloat16), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("backend", ["reference", "triton", "cpu"])
def test_synapse_equals_prefiltered_input(backend):
    """A model with a synapse on x equals the same model without one on the filtered
    current I (forward and gradients: x's through the filter's adjoint)."""
    torch.manual_seed(11)
    tau_syn = torch.rand(N, dtype=torch.float64) * 3 + 0.5
    x = (torch.rand(T, B, N) * 25).requires_grad_()
    I0 = (torch.rand(B, N) * 2).requires_grad_()
    syn = adex.AdExIF(N, tau_syn=tau_syn, V_th=-62.0, dt=0.5, backend=backend)
    plain = adex.AdExIF(N, V_th=-62.0, dt=0.5, backend=backend)
    syn.init_state(B)
    plain.init_state(B)
    syn.I = I0
    out = syn(x, return_states=True)
    I_seq = synapse_reference(x, I0, tau_syn.float(), 0.5)
    out_plain = plain(I_seq, return_states=True)
    for k in ("spikes", "V", "w"):
        assert_close(k, getattr(out_plain, k), getattr(out, k), 1e-5, 1e-6)
    assert_close("I", I_seq, out.I, 1e-5, 1e-6)
    assert out.spikes.sum() > 0
    w = torch.rand(T, B, N)
    ga = torch.autograd.grad((out.spikes * w).sum() + out.V.sum() * 0.1, [x, I0])
    gb = torch.autograd.grad((out_plain.spikes * w).sum() + out_plain.V.sum() * 0.1, [x, I0])
    for name, a, b in zip(("x", "I0"), ga, gb, strict=True):
        assert_close(f"grad {name}", b, a, 1e-5 * b.abs().max().item(), 1e-5)


def test_synapse_filter_is_exact_integration():
    """I_t of a constant input from I0 is x + (I0 - x) exp(-t dt / tau_syn)."""
    x = torch.full((20, 2), 3.0, dtype=torch.float64)
    I0 = torch.tensor([0.0, 5.0], dtype=torch.float64)
    got = synapse_reference(x, I0, 2.0, 0.25)
    t = torch.arange(1, 21, dtype=torch.float64)[:, None] * 0.25
    assert_close("I", 3.0 + (I0 - 3.0) * torch.exp(-t / 2.0), got, 1e-12)


@pytest.mark.parametrize("cls", [adex.AdExIF, adex.LIF], ids=lambda c: c.__name__)
def test_gradcheck_reference_float64(cls):
    torch.manual_seed(2)
    x = (torch.rand(6, 2, dtype=torch.float64) * 3).requires_grad_()  # below threshold
    I0 = torch.rand(2, dtype=torch.float64).requires_grad_()
    tau_syn = (torch.rand(2, dtype=torch.float64) + 1.0).requires_grad_()
    V0 = torch.full((2,), -60.0 if cls is adex.AdExIF else 0.0, dtype=torch.float64)
    w0 = torch.zeros(2, dtype=torch.float64) if cls is adex.AdExIF else None
    extra = {} if cls is adex.AdExIF else dict(has_exp=False)
    base = {} if cls is adex.AdExIF else dict(tau=5.0, V_th=1e3, V_reset=0.0, V_rest=0.0)

    # a surrogate of tiny support: finite differences see no spike path (none is near)
    tiny = adex.surrogate.ReluGrad(alpha=0.3, width=1e-6)

    def f(x, I0, tau_syn):
        p = AdExParams(tau_syn=tau_syn, **base)
        out = adex.adex_scan(x, V0, w0, p, dt=0.5, I0=I0, return_states=True,
                             backend="reference", surrogate=tiny, **extra)  # fmt: skip
        assert out.spikes.sum() == 0 and bool((out.V < p.V_th - 0.5).all())
        return out.V, out.I

    assert torch.autograd.gradcheck(f, (x, I0, tau_syn))


def test_state_carried_and_reset():
    layer = adex.LIF(N, tau_syn=2.0, backend="reference")
    assert layer.has_syn and adex.LIF(N).I is None
    layer.init_state(B)
    assert torch.equal(layer.I, torch.zeros(B, N))
    x = torch.rand(T, B, N) * 5
    full = layer(x, return_states=True)
    assert torch.equal(layer.I, full.I[-1])
    layer.init_state(B)
    layer(x[:4])
    second = layer(x[4:], return_states=True)
    assert_close("I", full.I[4:], second.I, 1e-6)
    assert_close("V", full.V[4:], second.V, 1e-5)
    layer.I = torch.ones(B, N)  # assignable, in mA
    layer(x[:1])
    assert torch.all(layer.I > 0.5)
    assert "tau_syn=2 ms" in repr(layer)


def test_bad_input():
    with pytest.raises(ValueError, match="tau_syn"):
        adex.AdExIF(N, tau_syn=0.0)
    with pytest.raises(ValueError, match="tau_syn"):
        adex.LIF(N, tau_syn=-1 * adex.u.ms)
    with pytest.raises(ValueError, match="time"):
        adex.LIF(N, tau_syn=1 * adex.u.mV)
    with pytest.raises(ValueError, match="tau_syn"):
        adex.LIF(N, tau_syn=torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="tau_syn"):
        adex.AdExIF(N, learnable=("tau_syn",))  # no synapse to learn
    with pytest.raises(AttributeError, match="synaptic"):
        adex.AdExIF(N).I = torch.zeros(N)
    x, V0 = torch.rand(3, N), torch.full((N,), -65.0)
    with pytest.raises(ValueError, match="I0"):
        adex.adex_scan(x, V0, torch.zeros(N), AdExParams(tau_syn=1.0))
    with pytest.raises(ValueError, match="I0"):
        adex.adex_scan(x, V0, torch.zeros(N), I0=torch.zeros(N))
    layer = adex.LIF(N, tau_syn=1.0, learnable=("tau_syn",), backend="reference")
    layer.init_state()
    with torch.no_grad():
        layer.tau_syn.fill_(-1.0)  # an optimizer step out of range
    with pytest.raises(ValueError, match="tau_syn"):
        layer(torch.rand(2, N))
    assert math.isfinite(AdExParams(tau_syn=2.0).packed(1, torch.device("cpu"))[10, 0].item())
