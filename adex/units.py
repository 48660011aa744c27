"""Physical units: the package's pint registry and conversion to canonical units.

adex works internally in BrainPy's canonical units, in which no scale factor appears in the
equations: voltage mV, time ms, current mA, resistance ohm, conductance S
(1 ohm * 1 mA = 1 mV and 1 S * 1 mV = 1 mA).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pint
import torch

u = pint.UnitRegistry()
"""The package's unit registry: ``10 * adex.u.ms``, ``-55 * adex.u.mV``, ``2 * adex.u.nS``."""

# Common capitalised spellings that pint does not define by itself.
for _prefix, _name in (("k", "kilo"), ("M", "mega"), ("G", "giga")):
    u.define(f"{_prefix}Ohm = {_name}ohm")

CANONICAL = {
    "voltage": ("mV", "[electric_potential]"),
    "time": ("ms", "[time]"),
    "current": ("mA", "[current]"),
    "resistance": ("ohm", "[resistance]"),
    "conductance": ("S", "[conductance]"),
}
"""Physical kind -> (canonical unit, pint dimensionality)."""


def is_quantity(value: Any) -> bool:
    """True if ``value`` is a pint quantity (from any registry)."""
    return isinstance(value, pint.Quantity)


def to_canonical(value: Any, kind: str, name: str) -> Any:
    """Strip the unit of ``value``, expressing it in the canonical unit of ``kind``.

    Args:
        value: a pint quantity (scalar, NumPy array or torch tensor magnitude) or a plain
            number / array / tensor, which is taken to be in the canonical unit already.
        kind: one of ``CANONICAL``'s keys ("voltage", "time", "current", "resistance",
            "conductance").
        name: the argument's name, used in error messages.

    Returns:
        The magnitude in the canonical unit (same container type as the magnitude).

    Raises:
        ValueError: if ``value`` is a quantity of the wrong dimension.
    """
    unit, dim = CANONICAL[kind]
    if isinstance(value, pint.Unit):  # a bare unit, e.g. ``adex.u.ms``, means one of it
        value = 1 * value
    if not is_quantity(value):
        return value
    if not value.check(dim):
        raise ValueError(
            f"{name} must be a {kind} quantity (convertible to {unit}), "
            f"got {value.units} ({value.dimensionality})"
        )
    factor = float((1 * value.units).to(unit).magnitude)
    magnitude = value.magnitude
    if isinstance(magnitude, torch.Tensor | np.ndarray):
        return magnitude * factor
    return float(magnitude) * factor
