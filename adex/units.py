"""Physical units: the package's pint registry and conversion to canonical units.

adex works internally in BrainPy's canonical units, in which no scale factor appears in the
equations: voltage mV, time ms, current mA, resistance ohm, conductance S
(1 ohm * 1 mA = 1 mV and 1 S * 1 mV = 1 mA).
"""

from __future__ import annotations

import sys
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


SAIUNIT_PACKAGES = ("saiunit", "brainunit")
"""Packages of BrainPy's own quantities (same API; ``brainunit`` is the earlier name), read
by duck typing: adex never imports them, it uses the one the value's type comes from."""

_SAIUNIT_NAMES = {"mV": "mV", "ms": "ms", "mA": "mA", "ohm": "ohm", "S": "siemens"}
"""Canonical unit -> its name in saiunit."""


def _saiunit_of(value: Any):
    """The (already imported) saiunit-like package of ``value``'s type, or None."""
    root = type(value).__module__.partition(".")[0]
    return sys.modules.get(root) if root in SAIUNIT_PACKAGES else None


def is_quantity(value: Any) -> bool:
    """True if ``value`` is a pint quantity (from any registry) or a saiunit / brainunit
    quantity."""
    if isinstance(value, pint.Quantity):
        return True
    package = _saiunit_of(value)
    return package is not None and isinstance(value, package.Quantity)


def to_canonical(value: Any, kind: str, name: str) -> Any:
    """Strip the unit of ``value``, expressing it in the canonical unit of ``kind``.

    Args:
        value: a pint or saiunit / brainunit quantity (scalar, NumPy array or torch tensor
            magnitude; a bare unit means one of it) or a plain
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
    if not isinstance(value, pint.Quantity):
        package = _saiunit_of(value)
        return value if package is None else _from_saiunit(package, value, kind, name)
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


def _from_saiunit(package: Any, value: Any, kind: str, name: str) -> Any:
    """:func:`to_canonical` of a saiunit / brainunit quantity or bare unit (``package``:
    the module its type comes from). Its mantissa may be a number, a NumPy array or a torch
    tensor (kept, gradients included)."""
    unit = CANONICAL[kind][0]
    target = getattr(package, _SAIUNIT_NAMES[unit])
    if isinstance(value, package.Unit):
        value = package.Quantity(1.0, unit=value)
    elif not isinstance(value, package.Quantity):
        return value
    if value.dim != target.dim:
        raise ValueError(
            f"{name} must be a {kind} quantity (convertible to {unit}), "
            f"got {value.unit} ({value.dim})"
        )
    magnitude = value.to_decimal(target)
    if isinstance(magnitude, torch.Tensor | np.ndarray):
        return magnitude
    try:
        return float(magnitude)
    except TypeError as err:
        raise TypeError(
            f"{name}: a {package.__name__} quantity must hold a number, a NumPy array or a "
            f"torch tensor, got {type(magnitude).__name__}"
        ) from err
