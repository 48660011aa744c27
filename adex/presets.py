"""Published parameter sets: the eight firing patterns of Naud et al. (2008).

Naud, Marcille, Clopath & Gerstner (2008), "Firing patterns in the adaptive exponential
integrate-and-fire model", Biol. Cybern. 99:335-347, Table 1. Every row has V_T = -50 mV,
delta_T = 2 mV and the spike peak at 0 mV; the neuron starts at rest (V = E_L, w = 0) and a
step current I is switched on at t = 0.

``naud2008`` maps each pattern name to a :class:`NaudPattern` whose
:meth:`~NaudPattern.module_kwargs` are the keyword arguments of :class:`adex.AdExIF`
(tau = C/gL, R = 1/gL, V_rest = E_L, V_T, delta_T, a, b, tau_w, V_reset = V_r,
V_th = 0 mV peak, hard reset, V starting at E_L) and whose :attr:`~NaudPattern.current` is
the step current:

>>> import torch, adex
>>> from adex.presets import naud2008
>>> p = naud2008["adapting"]
>>> layer = adex.AdExIF(1, **p.module_kwargs())
>>> layer.init_state()
>>> spikes = layer(torch.full((5000, 1), p.current.to("mA").magnitude))  # 500 ms

Two rows differ from the printed table. As printed, *delayed regular bursting*
(C 200 pF, gL 12 nS, E_L -70 mV, a -6 nS, tau_w 300 ms, b 0 pA, V_r -58 mV, I 110 pA) gives
no spike in 500 ms and *transient* (C 100 pF, gL 10 nS, E_L -65 mV, a -10 nS, tau_w 90 ms,
b 30 pA, V_r -47 mV, I 350 pA) fires throughout the step, in every simulator and step size.
``naud2008`` ships instead the values that Brian2's example of this paper uses, adapted by
P. Mueller to match the paper's figures:

* delayed regular bursting: C 100 pF, gL 10 nS, E_L -65 mV, a -10 nS, tau_w 90 ms,
  b 30 pA, V_r -47 mV, I 110 pA;
* transient: C 100 pF, gL 10 nS, E_L -65 mV, a 10 nS, tau_w 90 ms, b 100 pA, V_r -47 mV,
  I 180 pA.

The printed rows are kept in ``naud2008_table1`` (the other six rows are the same objects
in both dicts).

With V_th at the 0 mV peak, BrainPy's exponential-Euler step overflows near the peak at
dt = 0.1 ms; adex's runaway rule (``adex.RUNAWAY_CEILING``) registers the spike at V_th
there instead, which is what makes these rows usable as published. The *irregular* row is
chaotic: only its spike count and coarse statistics are reproducible, not its spike times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pint
import torch

from adex.init import Constant
from adex.params import PARAM_KINDS
from adex.units import to_canonical, u

__all__ = ["NaudPattern", "naud2008", "naud2008_table1", "stacked_module_kwargs"]

V_T = -50.0 * u.mV
"""Exponential threshold of every Naud et al. (2008) row."""
DELTA_T = 2.0 * u.mV
"""Slope factor of every row."""
PEAK = 0.0 * u.mV
"""Spike peak of every row, used as the detection threshold ``V_th``."""


@dataclass(frozen=True)
class NaudPattern:
    """One row of Naud et al. (2008), Table 1, as pint quantities.

    Attributes:
        name: pattern name (a key of :data:`naud2008`).
        C: membrane capacitance (pF). gL: leak conductance (nS). EL: leak reversal (mV).
        a: subthreshold adaptation (nS). tau_w: adaptation time constant (ms).
        b: spike-triggered adaptation (pA). Vr: reset potential (mV).
        I: step current amplitude (pA).
        VT: exponential threshold (-50 mV). delta_T: slope factor (2 mV).
        peak: spike peak (0 mV), the detection threshold.
        adapted: True where the values are Brian2's adapted ones, not the printed row.
    """

    name: str
    C: pint.Quantity
    gL: pint.Quantity
    EL: pint.Quantity
    a: pint.Quantity
    tau_w: pint.Quantity
    b: pint.Quantity
    Vr: pint.Quantity
    I: pint.Quantity
    VT: pint.Quantity = V_T
    delta_T: pint.Quantity = DELTA_T
    peak: pint.Quantity = PEAK
    adapted: bool = False

    @property
    def current(self) -> pint.Quantity:
        """The step current (pA), on from t = 0 for the whole simulation."""
        return self.I

    @property
    def tau(self) -> pint.Quantity:
        """Membrane time constant C / gL (ms)."""
        return (self.C / self.gL).to(u.ms)

    @property
    def R(self) -> pint.Quantity:
        """Membrane resistance 1 / gL (Mohm)."""
        return (1 / self.gL).to(u.Mohm)

    def module_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`adex.AdExIF` for this pattern (pint quantities):
        tau, R, V_rest, V_T, delta_T, a, b, tau_w, V_reset, V_th (the 0 mV peak),
        ``spk_reset='hard'`` and ``V_initializer`` = E_L (the paper starts at rest; w
        starts at 0, AdExIF's default). Add ``dt``, ``backend``, ... as needed."""
        return dict(
            tau=self.tau,
            R=self.R,
            V_rest=self.EL,
            V_T=self.VT,
            delta_T=self.delta_T,
            a=self.a,
            b=self.b,
            tau_w=self.tau_w,
            V_reset=self.Vr,
            V_th=self.peak,
            spk_reset="hard",
            V_initializer=Constant(self.EL),
        )


def _row(name: str, C, gL, EL, a, tau_w, b, Vr, current, adapted: bool = False) -> NaudPattern:
    return NaudPattern(
        name=name,
        C=C * u.pF,
        gL=gL * u.nS,
        EL=EL * u.mV,
        a=a * u.nS,
        tau_w=tau_w * u.ms,
        b=b * u.pA,
        Vr=Vr * u.mV,
        I=current * u.pA,
        adapted=adapted,
    )


_COMMON = {  #         C    gL   EL    a   tau_w   b    Vr    I
    "tonic": _row("tonic", 200, 10, -70, 2, 30, 0, -58, 500),
    "adapting": _row("adapting", 200, 12, -70, 2, 300, 60, -58, 500),
    "initial_burst": _row("initial_burst", 130, 18, -58, 4, 150, 120, -50, 400),
    "regular_bursting": _row("regular_bursting", 200, 10, -58, 2, 120, 100, -46, 210),
    "delayed_accelerating": _row("delayed_accelerating", 200, 12, -70, -10, 300, 0, -58, 300),
}
_IRREGULAR = _row("irregular", 100, 12, -60, -11, 130, 30, -48, 160)

naud2008_table1: dict[str, NaudPattern] = {
    **_COMMON,
    "delayed_regular_bursting": _row(
        "delayed_regular_bursting", 200, 12, -70, -6, 300, 0, -58, 110
    ),
    "transient": _row("transient", 100, 10, -65, -10, 90, 30, -47, 350),
    "irregular": _IRREGULAR,
}
"""Table 1 exactly as printed (two rows do not give their pattern; see the module doc)."""

naud2008: dict[str, NaudPattern] = {
    **_COMMON,
    "delayed_regular_bursting": _row(
        "delayed_regular_bursting", 100, 10, -65, -10, 90, 30, -47, 110, adapted=True
    ),
    "transient": _row("transient", 100, 10, -65, 10, 90, 100, -47, 180, adapted=True),
    "irregular": _IRREGULAR,
}
"""The eight firing patterns, in the paper's order; delayed regular bursting and transient
use Brian2's adapted values (see the module doc)."""


def stacked_module_kwargs(patterns: list[NaudPattern]) -> tuple[dict[str, Any], torch.Tensor]:
    """One :class:`adex.AdExIF` of ``len(patterns)`` neurons, neuron i running pattern i.

    Returns:
        ``(kwargs, current)``: AdExIF keyword arguments with per-neuron float64 tensors in
        canonical units (mV, ms, mA, ohm, S), ``spk_reset='hard'`` and ``V_initializer``
        (E_L per neuron, a float32 tensor); and the step currents ``[len(patterns)]`` in mA
        (float32).
    """
    if not patterns:
        raise ValueError("stacked_module_kwargs needs at least one pattern")
    per = [p.module_kwargs() for p in patterns]
    kwargs: dict[str, Any] = {}
    for key in per[0]:
        if key in PARAM_KINDS:
            values = [to_canonical(k[key], PARAM_KINDS[key], key) for k in per]
            kwargs[key] = torch.tensor(values, dtype=torch.float64)
    kwargs["V_initializer"] = torch.tensor(
        [to_canonical(p.EL, "voltage", "EL") for p in patterns], dtype=torch.float32
    )
    kwargs["spk_reset"] = "hard"
    current = torch.tensor([to_canonical(p.current, "current", "I") for p in patterns])
    return kwargs, current.to(torch.float32)
