"""State initializers (BrainPy's ``braintools.init`` names): callables ``shape -> tensor``.

Values may be pint quantities; they are converted to the state's canonical unit (V: mV,
w: mA) when the initializer is called for a state of that kind.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from adex.units import is_quantity, to_canonical


def _magnitude(value: Any, kind: str, name: str) -> float:
    value = to_canonical(value, kind, name)
    return float(value)


def _finite(value: float, name: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name}: initial values must be finite, got {value}")
    return value


class Initializer:
    """Base class: ``init(shape, kind, dtype, device) -> tensor`` in canonical units.

    ``resolved(kind, name)`` returns an equivalent initializer whose values are plain
    canonical numbers (units stripped, checked finite), so that calling it costs no unit
    parsing; the modules resolve their initializers once, at construction."""

    def resolved(self, kind: str, name: str) -> Initializer:
        """This initializer with canonical-unit float values for a state of ``kind``."""
        return self

    def __call__(
        self,
        shape: tuple[int, ...],
        kind: str = "voltage",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError


class Constant(Initializer):
    """Every element equals ``value`` (a quantity, or a number in the canonical unit)."""

    def __init__(self, value: Any):
        self.value = value

    def resolved(self, kind: str, name: str) -> Constant:
        return Constant(_finite(_magnitude(self.value, kind, "Constant"), name))

    def __call__(self, shape, kind="voltage", dtype=torch.float32, device=None):
        return torch.full(shape, _magnitude(self.value, kind, "Constant"), dtype=dtype,
                          device=device)  # fmt: skip

    def __repr__(self) -> str:
        return f"Constant({self.value})"


class Uniform(Initializer):
    """Uniform on ``[low, high)``, drawn from torch's global generator."""

    def __init__(self, low: Any, high: Any):
        self.low, self.high = low, high

    def resolved(self, kind: str, name: str) -> Uniform:
        low = _finite(_magnitude(self.low, kind, "Uniform.low"), name)
        return Uniform(low, _finite(_magnitude(self.high, kind, "Uniform.high"), name))

    def __call__(self, shape, kind="voltage", dtype=torch.float32, device=None):
        low = _magnitude(self.low, kind, "Uniform.low")
        high = _magnitude(self.high, kind, "Uniform.high")
        return torch.rand(shape, dtype=dtype, device=device) * (high - low) + low

    def __repr__(self) -> str:
        return f"Uniform({self.low}, {self.high})"


class Normal(Initializer):
    """Normal with ``mean`` and ``std``, drawn from torch's global generator."""

    def __init__(self, mean: Any, std: Any):
        self.mean, self.std = mean, std

    def resolved(self, kind: str, name: str) -> Normal:
        mean = _finite(_magnitude(self.mean, kind, "Normal.mean"), name)
        return Normal(mean, _finite(_magnitude(self.std, kind, "Normal.std"), name))

    def __call__(self, shape, kind="voltage", dtype=torch.float32, device=None):
        mean = _magnitude(self.mean, kind, "Normal.mean")
        std = _magnitude(self.std, kind, "Normal.std")
        return torch.randn(shape, dtype=dtype, device=device) * std + mean

    def __repr__(self) -> str:
        return f"Normal({self.mean}, {self.std})"


def make_state(
    init: Any, shape: tuple[int, ...], kind: str, name: str, dtype: torch.dtype, device: Any
) -> torch.Tensor:
    """Apply a state initializer: an ``Initializer``, any callable ``shape -> tensor/array``
    (canonical units), a quantity, a number, or a tensor broadcastable to ``shape``."""
    if isinstance(init, Initializer):
        try:
            return init(shape, kind=kind, dtype=dtype, device=device)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from err
    if callable(init) and not is_quantity(init) and not isinstance(init, torch.Tensor):
        value = to_canonical(init(shape), kind, name)
    else:
        value = to_canonical(init, kind, name)
    value = torch.as_tensor(value, dtype=dtype, device=device)
    try:
        return value.expand(shape).clone()
    except RuntimeError as err:
        raise ValueError(
            f"{name} gave shape {tuple(value.shape)}, which does not broadcast to {shape}"
        ) from err


def resolve_initializer(init: Any, kind: str, name: str) -> tuple[Any, bool]:
    """``init`` with its units resolved once: an :class:`Initializer` with canonical values,
    a quantity or number as a :class:`Constant`; tensors, arrays and other callables are
    kept (a callable's result is converted when it is called). Returns ``(initializer,
    trusted)``: ``trusted`` when its values are known finite without looking at them."""
    try:
        if isinstance(init, Initializer):
            return init.resolved(kind, name), type(init) in (Constant, Uniform, Normal)
        if is_quantity(init) or (isinstance(init, int | float) and not isinstance(init, bool)):
            return Constant(_finite(float(to_canonical(init, kind, name)), name)), True
    except (ValueError, TypeError) as err:
        msg = str(err)
        raise type(err)(msg if msg.startswith(name) else f"{name}: {msg}") from err
    return init, False
