"""Finite-difference checks (``torch.autograd.gradcheck``, float64) of the reference's BPTT.

A surrogate gradient is not the derivative of the Heaviside step, so finite differences
only agree with autograd where ``g(u) = 0``. These tests use a surrogate with a support of
|u| < 1e-6 and trajectories that keep every V at least 1e-4 * (V_th - V_reset) away from
the threshold (asserted): the spikes are then locally constant, their surrogate gradient is
zero, and everything else (the exponential term, exponential Euler with its second-order
term, the soft reset, w += b, the adaptation) must be differentiated exactly.

The hard reset ``V - (sg(V) - V_reset) * s`` is BrainPy's detached reset: its gradient is,
by design, not the derivative of ``V -> V_reset``. It is checked against finite differences
of the same trajectory with the reset offsets frozen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch.autograd import gradcheck

import adex
from adex.exprel import exprel
from adex.params import RUNAWAY_CEILING, AdExParams

F64 = torch.float64
TINY = adex.surrogate.ReluGrad(alpha=0.3, width=1e-6)
MARGIN = 1e-4  # min |u| over the trajectory, >> the surrogate's support (1e-6)


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


LIF_PARAMS = dict(R=1.0, tau=5.0, V_th=1.0, V_reset=0.0, V_rest=0.0)

PARAMS = {
    "adexif": AdExParams(),
    "adexif-perneuron": AdExParams(
        R=_t(1.0, 1.5, 0.8),
        tau=_t(8.0, 10.0, 14.0),
        tau_w=_t(20.0, 30.0, 60.0),
        V_th=_t(-55.0, -54.0, -52.0),
        V_reset=_t(-68.0, -66.0, -70.0),
        V_T=_t(-60.0, -59.9, -58.0),
        delta_T=_t(3.0, 3.48, 2.5),
        a=_t(0.5, 1.0, 2.0),
        b=_t(0.5, 1.0, 3.0),
    ),
    "expif": AdExParams(V_th=-50.0),
    "expif-perneuron": AdExParams(
        V_th=_t(-50.0, -52.0, -49.0), tau=_t(10.0, 7.0, 12.0), delta_T=_t(3.48, 2.0, 3.0)
    ),
    "lif": AdExParams(**LIF_PARAMS),
    "lif-perneuron": AdExParams(**dict(LIF_PARAMS, tau=_t(5.0, 3.0, 8.0), V_th=_t(1.0, 1.5, 0.8))),
}


@dataclass(frozen=True)
class Case:
    params: str
    dt: float
    T: int
    x_mean: float
    x_std: float
    V0_range: tuple[float, float]
    seed: int = 0

    @property
    def model(self) -> str:
        return self.params.split("-")[0]

    @property
    def has_w(self) -> bool:
        return self.model == "adexif"

    @property
    def has_exp(self) -> bool:
        return self.model != "lif"


CASES = {
    "adexif-dt0.1": Case("adexif", 0.1, 60, 60.0, 5.0, (-60.0, -50.0)),
    "adexif-dt1": Case("adexif", 1.0, 30, 40.0, 5.0, (-60.0, -50.0)),
    "adexif-perneuron-dt0.1": Case("adexif-perneuron", 0.1, 60, 60.0, 5.0, (-60.0, -50.0), 1),
    "adexif-perneuron-dt1": Case("adexif-perneuron", 1.0, 30, 40.0, 5.0, (-60.0, -50.0), 1),
    "expif-dt0.1": Case("expif", 0.1, 60, 50.0, 5.0, (-62.0, -48.0)),
    "expif-perneuron-dt0.1": Case("expif-perneuron", 0.1, 60, 50.0, 5.0, (-62.0, -48.0), 2),
    "lif-dt0.1": Case("lif", 0.1, 60, 6.0, 1.0, (0.0, 1.5)),
    "lif-perneuron-dt1": Case("lif-perneuron", 1.0, 30, 4.0, 1.0, (0.0, 1.5), 3),
}


def make_inputs(case: Case, batch: int = 2, n: int = 3):
    """x [T, batch, n], V0, w0 [batch, n] (w0 None without w), float64, requiring grad."""
    g = torch.Generator().manual_seed(case.seed)
    x = torch.randn(case.T, batch, n, generator=g, dtype=F64) * case.x_std + case.x_mean
    lo, hi = case.V0_range
    V0 = torch.rand(batch, n, generator=g, dtype=F64) * (hi - lo) + lo
    w0 = torch.rand(batch, n, generator=g, dtype=F64) * 2.0 if case.has_w else None
    return tuple(t.requires_grad_(True) for t in (x, V0, w0) if t is not None)


def scan(case: Case, *inputs, hard: bool = False, surrogate=TINY):
    x, V0 = inputs[0], inputs[1]
    w0 = inputs[2] if case.has_w else None
    return adex.adex_scan_reference(
        x,
        V0,
        w0,
        PARAMS[case.params],
        dt=case.dt,
        surrogate=surrogate,
        hard_reset=hard,
        has_exp=case.has_exp,
    )


def states_fn(case: Case, hard: bool = False):
    """The differentiable outputs: the V sequence (and the w sequence)."""

    def f(*inputs):
        _, V, w = scan(case, *inputs, hard=hard)
        return (V, w) if case.has_w else (V,)

    return f


def directional_mismatch(f, inputs, seed: int = 0, eps: float = 1e-6) -> float:
    """|c.(J v)_numeric - (J^T c).v| / |(J^T c).v| for random v, c: a cheap stand-in for a
    failing ``gradcheck`` (which rebuilds the whole Jacobian to report a failure)."""
    g = torch.Generator().manual_seed(seed)
    v = [torch.randn(t.shape, generator=g, dtype=F64) for t in inputs]
    outputs = f(*inputs)
    c = [torch.randn(o.shape, generator=g, dtype=F64) for o in outputs]
    grads = torch.autograd.grad(outputs, inputs, c)
    analytic = sum(float((gi * vi).sum()) for gi, vi in zip(grads, v, strict=True))
    with torch.no_grad():
        plus = f(*(t + eps * vi for t, vi in zip(inputs, v, strict=True)))
        minus = f(*(t - eps * vi for t, vi in zip(inputs, v, strict=True)))
    numeric = sum(
        float((ci * (p - m)).sum()) / (2 * eps) for ci, p, m in zip(c, plus, minus, strict=True)
    )
    return abs(numeric - analytic) / abs(analytic)


def check_trajectory(case: Case, inputs, hard: bool) -> torch.Tensor:
    """Assert the trajectory spikes, resets inside the graph, exercises the exponential term
    and keeps every V outside the surrogate's support. Returns the spikes."""
    p = PARAMS[case.params]
    with torch.no_grad():
        spikes, V, _ = scan(case, *inputs, hard=hard)
        theta = p.V_th - p.V_reset
        u = (torch.cat([inputs[1][None], V]) - p.V_th) / theta
        assert spikes.sum() >= 3, f"too few spikes: {int(spikes.sum())}"
        # a spike before the last step: the next step's reset is part of the graph
        assert spikes[:-1].sum() > 0
        assert spikes.sum(0).gt(0).sum() >= 2, "spikes in at least two neurons"
        # no V within the support (nor near it: the finite-difference steps must not flip
        # a spike); the surrogate gradient is then exactly zero everywhere
        assert u.abs().min() > MARGIN, f"min |u| = {u.abs().min():.3g}"
        assert TINY.grad(u).abs().max() == 0
        assert (V < p.V_th + RUNAWAY_CEILING * theta).all(), "runaway ceiling reached"
        assert not (V == p.V_th).any()
        if case.has_exp:
            z = (V - p.V_T) / p.delta_T
            assert z.max() > 0, "V should pass V_T, where the exponential term dominates"
            assert z.max() < 20, "clamp of the exponent reached"
    return spikes


@pytest.mark.parametrize("name", list(CASES))
def test_gradcheck_soft_reset(name):
    case = CASES[name]
    inputs = make_inputs(case)
    check_trajectory(case, inputs, hard=False)
    torch.manual_seed(0)
    assert gradcheck(states_fn(case), inputs, fast_mode=True, atol=1e-6, rtol=1e-4)


def test_gradcheck_full_jacobian_small():
    """Every entry of the Jacobian (not a random projection) on a small AdExIF case."""
    case = Case("adexif", 1.0, 12, 40.0, 5.0, (-58.0, -50.0), seed=4)
    inputs = make_inputs(case, batch=1, n=2)
    check_trajectory(case, inputs, hard=False)
    assert gradcheck(states_fn(case), inputs, fast_mode=False, atol=1e-6, rtol=1e-4)


def test_gradcheck_spikes_output_is_zero_gradient():
    """With the tiny surrogate the spikes' gradient is exactly zero, and finite differences
    agree (no spike flips under the perturbation)."""
    case = CASES["adexif-dt1"]
    inputs = make_inputs(case)
    check_trajectory(case, inputs, hard=False)

    def f(*inp):
        return scan(case, *inp)[0]

    torch.manual_seed(0)
    assert gradcheck(f, inputs, fast_mode=True)


def test_gradcheck_detects_a_wide_surrogate():
    """Sanity check of the set-up: with the default ReluGrad (support |u| < 1) the surrogate
    gradient is not a derivative of the trajectory, and gradcheck must notice."""
    case = CASES["adexif-dt1"]
    inputs = make_inputs(case)

    def f(*inp):
        return (scan(case, *inp, surrogate=adex.surrogate.ReluGrad())[1],)

    assert directional_mismatch(states_fn(case), inputs) < 1e-6  # tiny surrogate: agrees
    assert directional_mismatch(f, inputs) > 1e-2


# -- hard reset ---------------------------------------------------------------------------


def frozen_reset_scan(case: Case, masks, offsets, *inputs):
    """The hard-reset trajectory with the reset offsets ``V_{k-1} - V_reset`` (and which
    neurons reset) frozen at their values on the unperturbed trajectory, built from
    ``adex_step_reference`` with the reset done outside it. Its true derivative is what
    BrainPy's ``V - (sg(V) - V_reset) * s`` backpropagates when g(u) = 0."""
    p = PARAMS[case.params]
    x, V = inputs[0], inputs[1]
    w = inputs[2] if case.has_w else None
    Vs, ws = [], []
    for k in range(x.shape[0]):
        V = V - offsets[k] * masks[k]
        if w is not None:
            w = w + p.b * masks[k]
        # V is now V_reset (+ perturbation) where it spiked: below V_th, so the step's own
        # reset does nothing
        _, V, w = adex.adex_step_reference(
            x[k], V, w, p, dt=case.dt, surrogate=TINY, hard_reset=False, has_exp=case.has_exp
        )
        Vs.append(V)
        ws.append(w)
    return (torch.stack(Vs), torch.stack(ws)) if w is not None else (torch.stack(Vs),)


@pytest.mark.parametrize("name", list(CASES))
def test_gradcheck_hard_reset(name):
    case = CASES[name]
    p = PARAMS[case.params]
    inputs = make_inputs(case)
    spikes = check_trajectory(case, inputs, hard=True)
    with torch.no_grad():
        _, V, _ = scan(case, *inputs, hard=True)
        prev = torch.cat([inputs[1][None], V[:-1]])
        masks = (prev >= p.V_th).to(F64)
        offsets = prev - p.V_reset
    assert masks[1:].sum() > 0 and torch.equal(masks[1:], spikes[:-1].to(F64))

    # the frozen-offset map is the same trajectory ...
    ref = states_fn(case, hard=True)(*inputs)
    frozen = frozen_reset_scan(case, masks, offsets, *inputs)
    for r, f in zip(ref, frozen, strict=True):
        torch.testing.assert_close(f, r, atol=1e-10, rtol=1e-12)
    # ... its derivative is right (finite differences) ...
    torch.manual_seed(0)
    assert gradcheck(
        lambda *inp: frozen_reset_scan(case, masks, offsets, *inp),
        inputs,
        fast_mode=True,
        atol=1e-6,
        rtol=1e-4,
    )
    # ... and the reference backpropagates exactly that derivative
    g = torch.Generator().manual_seed(5)
    cot = [torch.randn(r.shape, generator=g, dtype=F64) for r in ref]
    g_ref = torch.autograd.grad(ref, inputs, cot)
    g_frozen = torch.autograd.grad(frozen, inputs, cot)
    for a, b in zip(g_ref, g_frozen, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9 * float(b.abs().max()), rtol=1e-9)


def test_hard_reset_gradient_is_not_the_true_derivative():
    """BrainPy detaches V in the hard reset: the gradient passes 1 through a reset where the
    true derivative of ``V -> V_reset`` is 0. gradcheck of the reference must fail there."""
    case = CASES["adexif-dt1"]
    inputs = make_inputs(case)
    check_trajectory(case, inputs, hard=True)
    assert directional_mismatch(states_fn(case, hard=False), inputs) < 1e-6
    assert directional_mismatch(states_fn(case, hard=True), inputs) > 1e-2


# -- the second-order term of exponential Euler --------------------------------------------


def first_order_scan(case: Case, *inputs):
    """AdExIF, soft reset, with the Jacobian J of exponential Euler detached: the same
    forward as the reference, minus the second-order gradient term (spec section 5)."""
    p = PARAMS[case.params]
    x, V, w = inputs
    theta = p.V_th - p.V_reset
    c_w = case.dt * exprel(torch.tensor(-case.dt / p.tau_w, dtype=F64)) / p.tau_w
    Vs, ws = [], []
    for k in range(x.shape[0]):
        s = TINY((V - p.V_th) / theta)
        V = V - theta * s
        w = w + p.b * s
        e = torch.exp((V - p.V_T) / p.delta_T)
        F = (-(V - p.V_rest) + p.delta_T * e - p.R * w + p.R * x[k]) / p.tau
        J = ((-1.0 + e) / p.tau).detach()
        V = V + case.dt * exprel(case.dt * J) * F
        w = w + c_w * (p.a * (V - p.V_rest) - w)
        Vs.append(V)
        ws.append(w)
    return torch.stack(Vs), torch.stack(ws)


def test_second_order_term_matters_at_dt1():
    """At dt = 1 ms, dropping dt^2 phi'(dt J) J'(V) F(V) from the gradient is detectable by
    finite differences and changes the gradients by well over 1%; the reference keeps it."""
    case = CASES["adexif-dt1"]
    inputs = make_inputs(case)
    check_trajectory(case, inputs, hard=False)
    ref = states_fn(case)(*inputs)
    first = first_order_scan(case, *inputs)
    for r, f in zip(ref, first, strict=True):
        torch.testing.assert_close(f, r, atol=1e-10, rtol=1e-12)  # same forward

    torch.manual_seed(0)
    assert gradcheck(states_fn(case), inputs, fast_mode=True, atol=1e-6, rtol=1e-4)
    assert directional_mismatch(lambda *inp: first_order_scan(case, *inp), inputs) > 1e-2

    g = torch.Generator().manual_seed(7)
    cot = [torch.randn(r.shape, generator=g, dtype=F64) for r in ref]
    g_ref = torch.autograd.grad(ref, inputs, cot)
    g_first = torch.autograd.grad(first, inputs, cot)
    rel = max(
        float((a - b).abs().max() / a.abs().max()) for a, b in zip(g_ref, g_first, strict=True)
    )
    assert rel > 0.01, f"first-order gradients differ by only {rel:.2%}"


# -- exprel -------------------------------------------------------------------------------

NEAR_ZERO = [-1e-3, -1e-6, -1e-9, 0.0, 1e-12, 1e-8, 1e-5, 1e-3, 0.05, -0.1]
FAR = [-40.0, -5.0, -0.7, -0.5001, 0.4999, 0.5, 0.5001, 0.9, 3.0, 20.0]


@pytest.mark.parametrize("region, values", [("near0", NEAR_ZERO), ("far", FAR)])
def test_exprel_gradcheck(region, values):
    z = torch.tensor(values, dtype=F64, requires_grad=True)
    assert gradcheck(exprel, (z,), atol=1e-8, rtol=1e-6)


def _exprel_exact(z: float) -> float:
    return 1.0 if z == 0 else math.expm1(z) / z


def _exprel_derivative_exact(z: float) -> float:
    if abs(z) < 1.0:  # sum_{n>=0} (n+1)/(n+2)! z^n, to float64 rounding
        return math.fsum((n + 1) / math.factorial(n + 2) * z**n for n in range(40))
    return ((z - 1.0) * math.exp(z) + 1.0) / z**2


@pytest.mark.parametrize("z", NEAR_ZERO + FAR)
def test_exprel_value_and_derivative_accurate(z):
    """Value and derivative to ~float64 rounding, including |z| << 1 where the closed forms
    (exp(z) - 1)/z and ((z - 1) e^z + 1)/z^2 cancel catastrophically."""
    t = torch.tensor(z, dtype=F64, requires_grad=True)
    value = exprel(t)
    (deriv,) = torch.autograd.grad(value, t)
    assert value.dtype == F64
    assert math.isclose(value.item(), _exprel_exact(z), rel_tol=1e-14)
    assert math.isclose(deriv.item(), _exprel_derivative_exact(z), rel_tol=1e-12, abs_tol=1e-300)


def test_exprel_float32_small_argument():
    """In float32, phi(z) for typical dt*J ~ 1e-2 is accurate to float32 rounding."""
    z = torch.tensor([-3e-2, -1e-2, -1e-4, 1e-6, 1e-2], dtype=torch.float32)
    out = exprel(z)
    assert out.dtype == torch.float32
    exact = torch.tensor([_exprel_exact(float(v)) for v in z.double()], dtype=F64)
    torch.testing.assert_close(out.double(), exact, atol=0, rtol=2e-7)
