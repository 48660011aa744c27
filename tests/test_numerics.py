"""Numerical safety: the runaway rule where BrainPy's arithmetic blows up, and what it leaves
alone (every trajectory that stays in range, LIF, input-driven overshoot)."""

import math

import numpy as np
import pytest
import torch
from helpers import EQUAL, Tolerance, compare_backends

import adex
import adex.reference as reference_module
from adex import AdExParams, adex_scan
from adex.surrogate import ReluGrad, Sigmoid

# Naud, Marcille, Clopath & Gerstner (2008), Table 1 rows as quoted in the spec (C pF, gL nS,
# EL mV, a nS, tau_w ms, b pA, Vr mV, I pA; V_T = -50 mV, delta_T = 2 mV, peak 0 mV).
NAUD_ROWS = {
    "tonic": (200, 10, -70, 2, 30, 0, -58, 500),
    "adapting": (200, 12, -70, 2, 300, 60, -58, 500),
    "initial_burst": (130, 18, -58, 4, 150, 120, -50, 400),
    "regular_bursting": (200, 10, -58, 2, 120, 100, -46, 210),
}


def naud_params() -> tuple[AdExParams, torch.Tensor]:
    """Per-neuron canonical parameters of the rows above (one neuron each), and I (mA)."""
    rows = np.array(list(NAUD_ROWS.values()), dtype=np.float64)
    C, gL, EL, a, tau_w, b, Vr, current = rows.T
    params = AdExParams(
        R=torch.tensor(1.0 / (gL * 1e-9)),  # ohm
        tau=torch.tensor(C / gL),  # pF / nS = ms
        tau_w=torch.tensor(tau_w),
        V_th=0.0,
        V_reset=torch.tensor(Vr),
        V_rest=torch.tensor(EL),
        V_T=-50.0,
        delta_T=2.0,
        a=torch.tensor(a * 1e-9),  # S
        b=torch.tensor(b * 1e-9),  # mA
    )
    return params, torch.tensor(current * 1e-9, dtype=torch.float32)


def test_naud_rows_at_their_peak_threshold_stay_finite_and_fire():
    """With V_th at the paper's 0 mV peak, BrainPy's step overflows (+inf, then NaN after the
    hard reset); adex stores V_th on those steps and the published patterns come out.
    (Reference only: the fused path is compared with it on the same rows below.)"""
    backend = "reference"
    params, current = naud_params()
    T = 1200  # 120 ms at dt = 0.1 ms
    x = current.expand(T, -1).clone().requires_grad_()
    V0 = torch.tensor([r[2] for r in NAUD_ROWS.values()], dtype=torch.float32)
    w0 = torch.zeros(4)
    out = adex_scan(x, V0, w0, params, dt=0.1, spk_reset="hard", backend=backend,
                    return_states=True)  # fmt: skip
    (out.spikes.sum() + out.V[-1].sum()).backward()
    assert torch.isfinite(out.V).all() and torch.isfinite(out.w).all()
    assert torch.isfinite(x.grad).all()
    ceiling = 0.0 + adex.RUNAWAY_CEILING * (0.0 - params.V_reset.float())
    assert (out.V <= ceiling).all()
    counts = out.spikes.sum(0)
    assert (counts >= 2).all(), counts
    # tonic fires regularly: its inter-spike intervals vary by less than 15 %
    times = torch.nonzero(out.spikes[:, 0]).flatten().double()
    isi = times[1:] - times[:-1]
    assert isi.numel() >= 5 and (isi.max() - isi.min()) / isi.mean() < 0.15, isi
    # adapting: the intervals grow
    times = torch.nonzero(out.spikes[:, 1]).flatten().double()
    isi = times[1:] - times[:-1]
    assert isi[-1] > 2 * isi[0], isi


def test_fused_matches_reference_through_runaway_steps():
    params, current = naud_params()
    T = 200
    x = current.expand(T, -1).clone()
    V0 = torch.full((4,), -60.0)
    w0 = torch.zeros(4)
    G = torch.rand(T, 4, generator=torch.Generator().manual_seed(3))

    def scan(backend):
        return lambda x, V0, w0: adex_scan(x, V0, w0, params, dt=0.1, spk_reset="hard",
                                           backend=backend, surrogate=Sigmoid(),
                                           return_states=True)  # fmt: skip

    tol = {"spikes": EQUAL, "V": Tolerance(1e-3, 1e-4),
           "grad_x": Tolerance(1e-3, 1e-3, scaled=True)}  # fmt: skip
    runs = compare_backends(scan, dict(x=x, V0=V0, w0=w0), dict(spikes=G), wrt=("x",), tol=tol)
    ref, fused = runs["reference"].out, runs["triton"].out
    # a runaway step stores exactly V_th on both paths
    assert torch.equal(ref["V"] == 0.0, fused["V"] == 0.0)
    assert (ref["V"] == 0.0).any()


@pytest.mark.parametrize("spk_reset", ["soft", "hard"])
def test_in_range_trajectories_are_brainpy_arithmetic(spk_reset, monkeypatch):
    """Disabling the rule changes nothing on a trajectory that stays below the ceiling."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(200, 3, 20, generator=gen, dtype=torch.float64) * 8 + 20
    V0 = torch.full((3, 20), -65.0, dtype=torch.float64)
    w0 = torch.zeros(3, 20, dtype=torch.float64)
    kwargs = dict(dt=0.5, surrogate=ReluGrad(), hard_reset=spk_reset == "hard")
    s1, V1, w1 = adex.adex_scan_reference(x, V0, w0, AdExParams(), **kwargs)
    assert s1.sum() > 50
    monkeypatch.setattr(reference_module, "RUNAWAY_CEILING", 1e300)
    s2, V2, w2 = adex.adex_scan_reference(x, V0, w0, AdExParams(), **kwargs)
    assert torch.equal(s1, s2) and torch.equal(V1, V2) and torch.equal(w1, w2)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_large_input_alone_never_triggers_the_rule(backend):
    """LIF (no exponential term) and steps starting below V_T keep BrainPy's arithmetic,
    however large the overshoot: V far above the ceiling is stored as computed."""
    lif = AdExParams(R=1.0, tau=5.0, V_th=1.0, V_reset=0.0, V_rest=0.0)
    x = torch.full((3, 4), 5000.0)
    out = adex_scan(x, torch.zeros(4), None, lif, dt=0.1, has_exp=False, backend=backend,
                    return_states=True)  # fmt: skip
    expected_first = 5000.0 * (1 - math.exp(-0.1 / 5.0))
    assert out.V[0, 0].item() == pytest.approx(expected_first, rel=1e-5)
    assert out.V[0, 0].item() > 1.0 + adex.RUNAWAY_CEILING * 1.0


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_brainpy_overflow_case_expif_defaults(backend):
    """ExpIF defaults (V_th = -30 mV) at dt = 0.1 ms: BrainPy jumps to ~1e15 mV and a hard
    reset then overflows to NaN; adex stays finite, fires and resets to V_reset."""
    params = AdExParams(V_th=-30.0)
    T, n = 120, 8
    x = torch.linspace(20, 60, n).expand(T, n).clone().requires_grad_()
    out = adex_scan(x, torch.full((n,), -65.0), None, params, dt=0.1, spk_reset="hard",
                    backend=backend, return_states=True)  # fmt: skip
    out.spikes.sum().backward()
    assert torch.isfinite(out.V).all() and torch.isfinite(x.grad).all()
    assert out.spikes.sum() > 0
    assert (out.V <= -30.0 + adex.RUNAWAY_CEILING * 38.0).all()
