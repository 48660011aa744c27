"""The ``AdExIF`` module: single vs multi-step, state carry-over (truncated BPTT), return
states, state shapes, units, per-neuron parameters, initializers, get_spike, repr and the
BrainPy defaults. Both backends where dynamics are involved (Triton through the
interpreter on CPU, so T and the neuron count stay small)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from conftest import DEVICE
from helpers import EQUAL, Tolerance, assert_close, compare_backends

import adex
from adex.params import AdExParams

u = adex.u
BACKENDS = ["reference", "triton", "cpu"]
T = 40
BATCH, N = 2, 4


def make_x(shape, T=T, seed=0, mean=20.0, std=5.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((T, *shape), generator=g, dtype=torch.float64).mul(std).add(mean).to(dtype)


def make_state(shape, seed=1, dtype=torch.float32):
    """V0 in [-62, -52) mV (some above V_th: reset on the first step), w0 in [0, 2) mA."""
    g = torch.Generator().manual_seed(seed)
    V0 = torch.rand(shape, generator=g, dtype=torch.float64) * 10.0 - 62.0
    w0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2.0
    return V0.to(dtype), w0.to(dtype)


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def weights(shape, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


def assert_spiky(spikes: torch.Tensor) -> None:
    """Spikes in several neurons and after the first step (so resets are exercised)."""
    assert spikes.sum() >= 4, f"only {int(spikes.sum())} spikes"
    assert spikes[1:].sum() > 0
    assert spikes.flatten(1).sum(0).gt(0).sum() >= 2


def assert_grads_close(name, ref, out, rel):
    for i, (r, o) in enumerate(zip(ref, out, strict=True)):
        assert o is not None, f"{name}[{i}]: no gradient"
        scale = float(r.abs().max())
        assert scale > 0, f"{name}[{i}]: reference gradient is all zero"
        assert_close(f"{name}[{i}]", r, o, rel * scale, rel)


def tolerance(backend):
    """(state atol, gradient rel): the reference computes identical ops per step; the fused
    backward recovers the drift from consecutive V, so it agrees to float32 rounding."""
    return (1e-6, 1e-5) if backend == "reference" else (1e-4, 1e-3)


# -- single step vs multi-step ------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_update_steps_equal_multistep(backend):
    x = make_x((BATCH, N))
    V0, w0 = make_state((BATCH, N))
    G = weights(x.shape)
    gV, gw = weights((BATCH, N), 3), weights((BATCH, N), 4)
    atol, rel = tolerance(backend)

    def loss(spikes, layer):
        return (spikes * G).sum() + (layer.V * gV).sum() + (layer.w * gw).sum()

    multi = adex.AdExIF(N, backend=backend)
    multi.init_state(BATCH)
    xa, Va, wa = leaf(x), leaf(V0), leaf(w0)
    multi.V, multi.w = Va, wa
    spikes_multi = multi(xa)
    grads_multi = torch.autograd.grad(loss(spikes_multi, multi), [xa, Va, wa])

    single = adex.AdExIF(N, backend=backend)
    single.init_state(BATCH)
    xb, Vb, wb = leaf(x), leaf(V0), leaf(w0)
    single.V, single.w = Vb, wb
    steps = [single.update(xb[t]) for t in range(T)]
    assert steps[0].shape == (BATCH, N)
    spikes_single = torch.stack(steps)
    grads_single = torch.autograd.grad(loss(spikes_single, single), [xb, Vb, wb])

    assert_spiky(spikes_multi)
    assert torch.equal(spikes_single, spikes_multi)
    assert_close("V", multi.V, single.V, atol, 1e-6)
    assert_close("w", multi.w, single.w, atol, 1e-6)
    assert_grads_close("grad (x, V0, w0)", grads_multi, grads_single, rel)


# -- state carry-over ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_halves_equal_one_call(backend):
    x = make_x((BATCH, N), seed=5)
    V0, w0 = make_state((BATCH, N), seed=6)
    G = weights(x.shape, 7)
    atol, rel = tolerance(backend)

    one = adex.AdExIF(N, backend=backend)
    one.init_state(BATCH)
    x1, V1, w1 = leaf(x), leaf(V0), leaf(w0)
    one.V, one.w = V1, w1
    s_one = one(x1)
    g_one = torch.autograd.grad((s_one * G).sum(), [x1, V1, w1])

    two = adex.AdExIF(N, backend=backend)
    two.init_state(BATCH)
    x2, V2, w2 = leaf(x), leaf(V0), leaf(w0)
    two.V, two.w = V2, w2
    s_a = two(x2[: T // 2])
    carried_V, carried_w = two.V, two.w
    assert carried_V.requires_grad and carried_w.requires_grad
    s_b = two(x2[T // 2 :])
    s_two = torch.cat([s_a, s_b])
    g_two = torch.autograd.grad((s_two * G).sum(), [x2, V2, w2])

    assert_spiky(s_one)
    assert s_one[T // 2 :].sum() > 0
    assert torch.equal(s_two, s_one)
    assert_close("V", one.V, two.V, atol, 1e-6)
    assert_close("w", one.w, two.w, atol, 1e-6)
    assert_grads_close("grad (x, V0, w0)", g_one, g_two, rel)


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_bptt(backend):
    """The loss of the second call reaches the first call's input and the initial state
    through the carried state; detaching the carried state cuts it (truncated BPTT)."""
    x = make_x((BATCH, N), seed=8)
    V0, w0 = make_state((BATCH, N), seed=9)
    G = weights((T // 2, BATCH, N), 10)

    layer = adex.AdExIF(N, backend=backend)
    layer.init_state(BATCH)
    xa, xb, Vl, wl = leaf(x[: T // 2]), leaf(x[T // 2 :]), leaf(V0), leaf(w0)
    layer.V, layer.w = Vl, wl
    layer(xa)
    s_b = layer(xb)
    assert s_b.sum() > 0
    g_xa, g_V0, g_w0, g_xb = torch.autograd.grad((s_b * G).sum(), [xa, Vl, wl, xb])
    for name, g in (("x of call 1", g_xa), ("V0", g_V0), ("w0", g_w0), ("x of call 2", g_xb)):
        assert g.abs().sum() > 0, f"no gradient reaches {name}"

    # the same, from the carried state as leaves: the gradient w.r.t. the carried state
    layer2 = adex.AdExIF(N, backend=backend)
    layer2.init_state(BATCH)
    layer2.V, layer2.w = leaf(V0), leaf(w0)
    layer2(leaf(x[: T // 2]))
    Vc, wc = leaf(layer2.V), leaf(layer2.w)
    layer2.V, layer2.w = Vc, wc
    xb2 = leaf(x[T // 2 :])
    s_b2 = layer2(xb2)
    assert torch.equal(s_b2, s_b)
    g_Vc, g_wc = torch.autograd.grad((s_b2 * G).sum(), [Vc, wc])
    assert g_Vc.abs().sum() > 0 and g_wc.abs().sum() > 0

    # truncation: a detached carried state passes nothing back
    layer3 = adex.AdExIF(N, backend=backend)
    layer3.init_state(BATCH)
    xa3, V3 = leaf(x[: T // 2]), leaf(V0)
    layer3.V, layer3.w = V3, w0.clone()
    layer3(xa3)
    layer3.V, layer3.w = layer3.V.detach(), layer3.w.detach()
    s_b3 = layer3(leaf(x[T // 2 :]))
    assert torch.equal(s_b3, s_b)
    g = torch.autograd.grad((s_b3 * G).sum(), [xa3, V3], allow_unused=True)
    assert all(gi is None or not gi.any() for gi in g)


# -- return_states --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_return_states(backend):
    x = make_x((BATCH, N), seed=11)
    V0, w0 = make_state((BATCH, N), seed=12)
    layer = adex.AdExIF(N, backend=backend)
    layer.init_state(BATCH)
    layer.V, layer.w = leaf(V0), leaf(w0)
    xl = leaf(x)
    seq = layer(xl, return_states=True)
    assert isinstance(seq, adex.StateSequence)
    assert seq._fields == ("spikes", "V", "w")
    for name in seq._fields:
        assert getattr(seq, name).shape == (T, BATCH, N), name
    assert seq.spikes.dtype == x.dtype
    assert_spiky(seq.spikes)
    assert torch.equal(seq.V[-1], layer.V)
    assert torch.equal(seq.w[-1], layer.w)
    # V is stored pre-reset: a spike at step k is exactly V_k >= V_th
    assert torch.equal(seq.spikes.bool(), seq.V >= -55.0)
    # the sequences are differentiable
    (gx,) = torch.autograd.grad(seq.V.sum() + seq.w.sum(), [xl])
    assert gx.abs().sum() > 0

    # the same run without return_states: same spikes and final state
    again = adex.AdExIF(N, backend=backend)
    again.init_state(BATCH)
    again.V, again.w = leaf(V0), leaf(w0)
    spikes = again(leaf(x))
    assert torch.equal(spikes, seq.spikes)
    assert_close("V", layer.V, again.V, 1e-6)
    assert_close("w", layer.w, again.w, 1e-6)


# -- state shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_batch_state(backend):
    layer = adex.AdExIF(N, backend=backend)
    layer.init_state()
    assert layer.V.shape == (N,) and layer.w.shape == (N,)
    V0, w0 = make_state((N,), seed=13)
    x = make_x((N,), seed=14)
    layer.V, layer.w = leaf(V0), leaf(w0)
    spikes = layer(leaf(x))
    assert spikes.shape == (T, N) and layer.V.shape == (N,)
    assert spikes.sum() > 0

    batched = adex.AdExIF(N, backend=backend)
    batched.init_state(1)
    assert batched.V.shape == (1, N)
    batched.V, batched.w = leaf(V0[None]), leaf(w0[None])
    spikes1 = batched(leaf(x[:, None]))
    assert torch.equal(spikes1[:, 0], spikes)
    assert_close("V", batched.V[0], layer.V, 1e-6)

    step = layer.update(leaf(x[0]))
    assert step.shape == (N,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_2d_in_size(backend):
    in_size = (3, 4)
    layer = adex.AdExIF(in_size, backend=backend)
    layer.init_state(BATCH)
    assert layer.V.shape == (BATCH, *in_size)
    layer.init_state()
    assert layer.V.shape == in_size
    layer.init_state(BATCH)
    V0, w0 = make_state((BATCH, *in_size), seed=15)
    x = make_x((BATCH, *in_size), seed=16)
    layer.V, layer.w = leaf(V0), leaf(w0)
    seq = layer(leaf(x), return_states=True)
    assert seq.spikes.shape == (T, BATCH, *in_size)
    assert_spiky(seq.spikes)

    flat = adex.AdExIF(12, backend=backend)
    flat.init_state(BATCH)
    flat.V, flat.w = leaf(V0.reshape(BATCH, 12)), leaf(w0.reshape(BATCH, 12))
    seq_flat = flat(leaf(x.reshape(T, BATCH, 12)), return_states=True)
    assert torch.equal(seq_flat.spikes.reshape(seq.spikes.shape), seq.spikes)
    assert_close("V", seq_flat.V.reshape(seq.V.shape), seq.V, 1e-6)


# -- units ----------------------------------------------------------------------------------

# (parameter, quantity in another unit, value in the canonical unit)
QUANTITIES = [
    ("R", 1e-6 * u.MOhm, 1.0),
    ("R", 2000 * u.mohm, 2.0),
    ("tau", 0.01 * u.s, 10.0),
    ("tau", 20000 * u.us, 20.0),
    ("tau_w", 0.05 * u.s, 50.0),
    ("V_th", -0.05 * u.V, -50.0),
    ("V_reset", -70000 * u.uV, -70.0),
    ("V_rest", -0.06 * u.V, -60.0),
    ("V_T", -58 * u.mV, -58.0),
    ("delta_T", 2500 * u.uV, 2.5),
    ("a", 1e9 * u.nS, 1.0),
    ("a", 500 * u.mS, 0.5),
    ("b", 1e9 * u.pA, 1.0),
    ("b", 2000 * u.uA, 2.0),
]

CANONICAL_UNITS = {
    "R": "ohm",
    "tau": "ms",
    "tau_w": "ms",
    "V_th": "mV",
    "V_reset": "mV",
    "V_rest": "mV",
    "V_T": "mV",
    "delta_T": "mV",
    "a": "S",
    "b": "mA",
}


@pytest.mark.parametrize(
    "name, quantity, canonical", QUANTITIES, ids=[f"{n}-{q.units:~}" for n, q, _ in QUANTITIES]
)
def test_parameter_quantity_is_converted(name, quantity, canonical):
    # the expected value is right (pint's own conversion)
    assert quantity.to(CANONICAL_UNITS[name]).magnitude == pytest.approx(canonical, rel=1e-12)
    with_unit = adex.AdExIF(N, **{name: quantity})
    plain = adex.AdExIF(N, **{name: canonical})
    assert getattr(with_unit.params, name) == pytest.approx(canonical, rel=1e-12)
    assert getattr(plain.params, name) == canonical
    for other in CANONICAL_UNITS:
        if other != name:
            assert getattr(with_unit.params, other) == getattr(plain.params, other)


@pytest.mark.parametrize("backend", BACKENDS)
def test_quantities_give_the_same_dynamics(backend):
    kwargs_q = dict(
        R=1e-6 * u.MOhm,
        tau=0.012 * u.s,
        tau_w=40000 * u.us,
        V_th=-0.054 * u.V,
        V_reset=-68000 * u.uV,
        V_rest=-65 * u.mV,
        V_T=-0.0599 * u.V,
        delta_T=3480 * u.uV,
        a=5e8 * u.nS,
        b=2e9 * u.pA,
        dt=200 * u.us,
    )
    kwargs_c = dict(
        R=1.0, tau=12.0, tau_w=40.0, V_th=-54.0, V_reset=-68.0, V_rest=-65.0, V_T=-59.9,
        delta_T=3.48, a=0.5, b=2.0, dt=0.2,
    )  # fmt: skip
    for key, q in kwargs_q.items():
        unit = "ms" if key == "dt" else CANONICAL_UNITS[key]
        assert q.to(unit).magnitude == pytest.approx(kwargs_c[key], rel=1e-12), key
    lq = adex.AdExIF(N, backend=backend, **kwargs_q)
    lc = adex.AdExIF(N, backend=backend, **kwargs_c)
    assert lq.dt == pytest.approx(0.2, rel=1e-12)
    x = make_x((BATCH, N), seed=17)
    V0, w0 = make_state((BATCH, N), seed=18)
    out = []
    for layer in (lq, lc):
        layer.init_state(BATCH)
        layer.V, layer.w = leaf(V0), leaf(w0)
        out.append(layer(leaf(x), return_states=True))
    assert_spiky(out[1].spikes)
    assert torch.equal(out[0].spikes, out[1].spikes)
    assert_close("V", out[1].V, out[0].V, 1e-4, 1e-6)
    assert_close("w", out[1].w, out[0].w, 1e-5, 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_current_quantity(backend):
    """x * u.uA is x / 1000 mA; a quantity in nA or A is rescaled too; the state setters
    accept quantities."""
    x_mA = make_x((BATCH, N), seed=19)
    V0, w0 = make_state((BATCH, N), seed=20)
    results = []
    for x in (x_mA, (x_mA * 1000.0) * u.uA, (x_mA / 1000.0) * u.A, u.Quantity(x_mA * 1e6, "nA")):
        layer = adex.AdExIF(N, backend=backend)
        layer.init_state(BATCH)
        layer.V = (V0 / 1000.0).requires_grad_(True) * u.V
        layer.w = (w0 * 1000.0).requires_grad_(True) * u.uA
        results.append(layer(x, return_states=True))
    assert_spiky(results[0].spikes)
    for r in results[1:]:
        assert torch.equal(r.spikes, results[0].spikes)
        assert_close("V", results[0].V, r.V, 1e-3, 1e-5)

    # x in uA as a plain number would be 1000x too large: the unit really is applied
    layer = adex.AdExIF(N, backend="reference")
    layer.init_state(BATCH)
    layer.V, layer.w = V0.clone(), w0.clone()
    small = layer(x_mA * u.uA)
    assert small.sum() < results[0].spikes.sum()

    # update() takes a quantity too
    layer = adex.AdExIF(N, backend="reference")
    layer.init_state(BATCH)
    layer.V, layer.w = V0.clone(), w0.clone()
    s_q = layer.update(x_mA[0] * 1000.0 * u.uA)
    V_q = layer.V.clone()
    layer.V, layer.w = V0.clone(), w0.clone()
    s_c = layer.update(x_mA[0])
    assert torch.equal(s_q, s_c)
    assert_close("V after one step", layer.V, V_q, 1e-5)


def test_state_setter_converts_units():
    layer = adex.AdExIF(N)
    layer.init_state(BATCH)
    layer.V = torch.full((BATCH, N), -0.06) * u.V
    layer.w = torch.full((BATCH, N), 250.0) * u.uA
    assert torch.allclose(layer.V, torch.full((BATCH, N), -60.0))
    assert torch.allclose(layer.w, torch.full((BATCH, N), 0.25))


# -- per-neuron parameters ------------------------------------------------------------------

PER_NEURON = dict(
    tau=[8.0, 10.0, 12.0, 15.0],
    tau_w=[20.0, 30.0, 50.0, 100.0],
    V_th=[-56.0, -55.0, -54.0, -52.0],
    a=[0.5, 1.0, 1.5, 2.0],
    b=[0.5, 1.0, 2.0, 4.0],
    R=[1.0, 0.8, 1.2, 1.5],
    delta_T=[2.0, 3.48, 3.0, 2.5],
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_neuron_parameters(backend):
    """Per-neuron arrays: neuron j behaves like a scalar-parameter layer with values[j]."""
    x = make_x((BATCH, N), seed=21)
    V0, w0 = make_state((BATCH, N), seed=22)

    def run(layer, cols=slice(None)):
        layer.init_state(BATCH)
        layer.V, layer.w = leaf(V0[:, cols]), leaf(w0[:, cols])
        return layer(leaf(x[:, :, cols]), return_states=True)

    per = run(adex.AdExIF(N, backend=backend, **{k: np.array(v) for k, v in PER_NEURON.items()}))
    assert_spiky(per.spikes)
    for j in range(N):
        scalar = adex.AdExIF(1, backend=backend, **{k: v[j] for k, v in PER_NEURON.items()})
        out = run(scalar, slice(j, j + 1))
        assert torch.equal(out.spikes[..., 0], per.spikes[..., j]), f"neuron {j}"
        assert_close(f"V of neuron {j}", out.V[..., 0], per.V[..., j], 1e-4, 1e-6)
        assert_close(f"w of neuron {j}", out.w[..., 0], per.w[..., j], 1e-5, 1e-6)
    # neurons really differ: a shared tau would give other spikes
    shared = run(adex.AdExIF(N, backend=backend, **{k: v[0] for k, v in PER_NEURON.items()}))
    assert not torch.equal(shared.spikes, per.spikes)


def test_per_neuron_parameter_forms_agree():
    """NumPy arrays, tensors (any float/int dtype), lists of quantities and quantity arrays
    give the same canonical per-neuron values."""
    tau = [8.0, 10.0, 12.0, 15.0]
    forms = [
        np.array(tau),
        torch.tensor(tau),
        torch.tensor(tau, dtype=torch.float64),
        np.array(tau) / 1000.0 * u.s,
        torch.tensor(tau) * u.ms,
    ]
    expected = torch.tensor(tau, dtype=torch.float64)
    for form in forms:
        layer = adex.AdExIF(N, tau=form)
        assert isinstance(layer.params.tau, torch.Tensor), type(form)
        torch.testing.assert_close(
            layer.params.tau.double().reshape(-1), expected, rtol=1e-6, atol=0
        )
    # a per-neuron value broadcast over a 2-D in_size
    layer = adex.AdExIF((3, 4), tau=np.array(tau))
    assert tuple(layer.params.tau.shape) in {(3, 4), (4,)}
    torch.testing.assert_close(
        layer.params.tau.double().expand(3, 4), expected.expand(3, 4), rtol=1e-6, atol=0
    )


# -- initializers ---------------------------------------------------------------------------


def test_initializers():
    init = adex.init
    layer = adex.AdExIF(
        N, V_initializer=init.Constant(-0.06 * u.V), w_initializer=init.Constant(500 * u.uA)
    )
    layer.init_state(BATCH)
    assert layer.V.dtype == torch.float32 and layer.V.shape == (BATCH, N)
    assert torch.equal(layer.V, torch.full((BATCH, N), -60.0))
    assert torch.allclose(layer.w, torch.full((BATCH, N), 0.5))

    layer.init_state(BATCH, dtype=torch.float64)
    assert layer.V.dtype == torch.float64 and layer.w.dtype == torch.float64

    shapes = []

    def fill(shape):
        shapes.append(tuple(shape))
        return torch.full(shape, -61.0)

    layer = adex.AdExIF((2, 3), V_initializer=fill, w_initializer=lambda s: torch.ones(s) * 0.3)
    layer.init_state(5)
    assert shapes == [(5, 2, 3)]
    assert torch.equal(layer.V, torch.full((5, 2, 3), -61.0))
    assert torch.allclose(layer.w, torch.full((5, 2, 3), 0.3))
    layer.init_state()
    assert shapes[-1] == (2, 3)

    layer = adex.AdExIF(64, V_initializer=init.Uniform(-70 * u.mV, -0.05 * u.V))
    torch.manual_seed(0)
    layer.init_state(BATCH)
    V1 = layer.V.clone()
    assert V1.min() >= -70.0 and V1.max() < -50.0
    assert V1.std() > 2.0  # not constant
    torch.manual_seed(0)
    layer.reset_state(BATCH)
    assert torch.equal(layer.V, V1)  # torch's global generator

    layer = adex.AdExIF(4096, V_initializer=init.Normal(-60 * u.mV, 2000 * u.uV))
    torch.manual_seed(1)
    layer.init_state()
    assert abs(layer.V.mean().item() + 60.0) < 0.2
    assert abs(layer.V.std().item() - 2.0) < 0.2

    layer = adex.AdExIF(N, V_initializer=-63.0, w_initializer=0.1 * u.mA)
    layer.init_state(BATCH)
    assert torch.equal(layer.V, torch.full((BATCH, N), -63.0))
    assert torch.allclose(layer.w, torch.full((BATCH, N), 0.1))


def test_reset_state_refills():
    layer = adex.AdExIF(N, backend="reference", V_initializer=adex.init.Constant(-58 * u.mV))
    layer.init_state(BATCH)
    layer(make_x((BATCH, N), seed=23))
    assert not torch.equal(layer.V, torch.full((BATCH, N), -58.0))
    assert not torch.equal(layer.w, torch.zeros(BATCH, N))
    layer.reset_state(3)
    assert torch.equal(layer.V, torch.full((3, N), -58.0))
    assert torch.equal(layer.w, torch.zeros(3, N))


# -- get_spike ------------------------------------------------------------------------------


def test_get_spike():
    layer = adex.AdExIF(N, backend="reference")
    layer.init_state(BATCH)
    V0, w0 = make_state((BATCH, N), seed=24)
    layer.V, layer.w = V0, w0
    assert torch.equal(layer.get_spike(), (V0 >= -55.0).float())
    spikes = layer(make_x((BATCH, N), seed=25))
    assert torch.equal(layer.get_spike(), spikes[-1])

    V = torch.tensor([-70.0, -56.0, -55.0, -54.5, -40.0], dtype=torch.float64, requires_grad=True)
    s = layer.get_spike(V)
    assert torch.equal(s, torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    (g,) = torch.autograd.grad(s.sum(), V)
    # ReluGrad(0.3, 1) on u = (V - V_th) / (V_th - V_reset), chain rule 1/13
    uu = (V.detach() + 55.0) / 13.0
    expected = torch.clamp(0.3 - 0.3 * uu.abs(), min=0.0) / 13.0
    torch.testing.assert_close(g, expected)
    assert g[1] > 0 and g[0] == 0  # -70 is outside the window |V - V_th| < 13 mV

    sig = adex.AdExIF(N, spk_fun=adex.surrogate.Sigmoid(alpha=4.0), V_th=-50.0)
    V = torch.tensor([-52.0], requires_grad=True)
    (g,) = torch.autograd.grad(sig.get_spike(V).sum(), V)
    sv = torch.sigmoid(torch.tensor(4.0 * (-2.0 / 18.0)))
    torch.testing.assert_close(g, (4.0 * sv * (1 - sv) / 18.0).reshape(1))


# -- repr and defaults ----------------------------------------------------------------------


def test_extra_repr_shows_units():
    text = repr(adex.AdExIF(N, tau=0.02 * u.s, b=500 * u.uA))
    for part in (
        "R=1 ohm",
        "tau=20 ms",
        "tau_w=30 ms",
        "V_th=-55 mV",
        "V_reset=-68 mV",
        "V_rest=-65 mV",
        "V_T=-59.9 mV",
        "delta_T=3.48 mV",
        "a=1 S",
        "b=0.5 mA",
        "dt=0.1 ms",
        "soft",
        "ReluGrad",
    ):
        assert part in text, f"{part!r} not in {text}"
    per = repr(adex.AdExIF(N, tau=np.array([5.0, 6.0, 7.0, 8.0])))
    assert "tau=" in per and "ms" in per.split("tau=")[1].split(",")[0]


def test_brainpy_defaults():
    layer = adex.AdExIF(N)
    expected = dict(
        R=1.0, tau=10.0, tau_w=30.0, V_th=-55.0, V_reset=-68.0, V_rest=-65.0, V_T=-59.9,
        delta_T=3.48, a=1.0, b=1.0,
    )  # fmt: skip
    params = layer.params
    assert isinstance(params, AdExParams)
    for key, value in expected.items():
        assert getattr(params, key) == value, key
    assert params == AdExParams()
    assert layer.spk_fun == adex.surrogate.ReluGrad(alpha=0.3, width=1.0)
    assert type(layer.spk_fun) is adex.surrogate.ReluGrad
    assert layer.spk_reset == "soft"
    assert layer.dt == 0.1
    assert layer.in_size == (N,)
    layer.init_state()
    assert torch.equal(layer.V, torch.full((N,), -65.0))
    assert torch.equal(layer.w, torch.zeros(N))
    assert layer.V.dtype == torch.float32


def test_default_dynamics_silent_at_rest_and_firing_with_input():
    """BrainPy defaults: no input keeps V near rest; a 20 mA step fires repetitively (spec
    section 11: about 100 Hz)."""
    layer = adex.AdExIF(N, backend="reference")
    layer.init_state(BATCH)
    rest = layer(torch.zeros(200, BATCH, N))
    assert rest.sum() == 0
    # the exponential term (0.8 mV at V_rest) and adaptation settle V just above V_rest
    assert ((layer.V > -65.0) & (layer.V < -64.0)).all()
    layer.reset_state(BATCH)
    spikes = layer(torch.full((500, BATCH, N), 20.0))
    rate_hz = spikes.sum(0).mean().item() / (500 * 0.1e-3)
    assert 60.0 < rate_hz < 140.0, rate_hz


# -- fused path without gradients, and without w ----------------------------------------------


def scan_factory(**kwargs):
    """backend -> adex.adex_scan with ``kwargs``, called with x, V0, w0."""
    return lambda backend: functools.partial(adex.adex_scan, backend=backend, **kwargs)


SCAN_TOL = {"spikes": EQUAL, "V": Tolerance(1e-4, 1e-6)}


def test_triton_inference_without_grad():
    """Regression: the custom op once returned one empty placeholder for both V_seq and w_seq
    (aliased outputs, which torch.library rejects) when nothing needed a gradient."""
    x = make_x((BATCH, N), T=16, seed=26)
    V0, w0 = make_state((BATCH, N), seed=27)
    with torch.no_grad():
        compare_backends(scan_factory(), dict(x=x, V0=V0, w0=w0), tol=SCAN_TOL)


@pytest.mark.parametrize("has_exp", [True, False], ids=["expif", "lif"])
def test_triton_without_w(has_exp):
    """Regression: w0=None (ExpIF/LIF) once made the custom op return aliased placeholders."""
    x = make_x((BATCH, N), T=16, seed=28)
    V0, _ = make_state((BATCH, N), seed=29)
    runs = compare_backends(scan_factory(has_exp=has_exp, return_states=True),
                            dict(x=x, V0=V0, w0=None), wrt=("x",), tol=SCAN_TOL)  # fmt: skip
    assert runs["triton"].out["w"] is None


@pytest.mark.parametrize("cls", [adex.AdExIF, adex.AdExIFRef, adex.LIF])
def test_no_grad_launch_matches_custom_op(cls):
    """Without a gradient adex_scan calls the launcher directly (no custom-op dispatch);
    it must give the custom op's results bit for bit, for update() and a sequence."""
    gen = torch.Generator().manual_seed(21)
    lif = cls is adex.LIF
    x = (torch.randn(12, 2, 5, generator=gen) * 10 + (8 if lif else 50)).to(DEVICE)
    lo, width = (0.3, 1.0) if lif else (-58.0, 8.0)  # near threshold: spikes within T
    V0 = (torch.rand(2, 5, generator=gen) * width + lo).to(DEVICE)
    runs = []
    for grad in (False, True):
        layer = cls(5, backend="triton").to(DEVICE)
        layer.init_state(2)
        layer.V = V0
        xi = x.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            seq = layer(xi, return_states=True)
            last = layer.update(xi[0])
        runs.append([seq.spikes, seq.V, last, layer.V])
    assert runs[0][0].sum() > 0
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a.detach(), b.detach())
