"""State initializers (BrainPy's ``braintools.init`` names): callables ``shape -> tensor``.

Values may be pint quantities; they are converted to the state's canonical unit (V: mV,
w: mA) when the initializer is called for a state of that kind.
"""

from __future__ import annotations

from typing import Any

import torch

from adex.units import is_quantity, to_canonical


def _magnitude(value: Any, kind: str, name: str) -> float:
    value = to_canonical(value, kind, name)
    return float(value)


class Initializer:
    """Base class: ``init(shape, kind, dtype, device) -> tensor`` in canonical units."""

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

    def __call__(self, shape, kind="voltage", dtype=torch.float32, device=None):
        return torch.full(shape, _magnitude(self.value, kind, "Constant"), dtype=dtype,
                          device=device)  # fmt: skip

    def __repr__(self) -> str:
        return f"Constant({self.value})"


class Uniform(Initializer):
    """Uniform on ``[low, high)``, drawn from torch's global generator."""

    def __init__(self, low: Any, high: Any):
        self.low, self.high = low, high

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
