"""Neuron parameters in canonical units, their validation and their packed kernel layout."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cache
from typing import Any, NamedTuple

import numpy as np
import torch

from adex.units import to_canonical

ParamValue = float | torch.Tensor

PARAM_KINDS: dict[str, str] = {
    "R": "resistance",
    "tau": "time",
    "tau_w": "time",
    "V_th": "voltage",
    "V_reset": "voltage",
    "V_rest": "voltage",
    "V_T": "voltage",
    "delta_T": "voltage",
    "a": "conductance",
    "b": "current",
    "tau_syn": "time",
}
"""Every parameter of the AdEx family and its physical kind (see ``adex.units.CANONICAL``);
``tau_syn`` is the synaptic time constant of the optional synaptic current (None: none)."""

N_PARAMS = len(PARAM_KINDS)
"""Rows of the packed parameter layout (``[N_PARAMS, N]``)."""

ALL_PARAMS = (1 << N_PARAMS) - 1
"""A parameter mask (bit k: the parameter in packed row k, ``PARAM_KINDS`` order) of all of
them."""


@cache
def grad_rows(param_mask: int) -> tuple[int, ...]:
    """The packed rows whose gradients a backward with ``param_mask`` computes, in order:
    row i of its compact per-element parameter gradients ``[len, *S]`` is packed row
    ``grad_rows(param_mask)[i]`` (no memory for the rows without a gradient)."""
    return tuple(k for k in range(N_PARAMS) if param_mask >> k & 1)


def full_param_grads(grads: torch.Tensor, param_mask: int) -> torch.Tensor:
    """Compact parameter gradients ``[len(grad_rows(param_mask)), ...]`` as the packed
    layout's ``[N_PARAMS, ...]``, zero in the rows outside ``param_mask``."""
    if param_mask == ALL_PARAMS:
        return grads
    rows = torch.tensor(grad_rows(param_mask), dtype=torch.int64, device=grads.device)
    return grads.new_zeros((N_PARAMS, *grads.shape[1:])).index_copy_(0, rows, grads)


def per_neuron_grads(grad_elements: torch.Tensor, n: int, param_mask: int) -> torch.Tensor:
    """A backward's compact per-element parameter gradients ``[k, *S]`` (the rows of
    ``param_mask``) as the packed ``[N_PARAMS, N]`` gradient, summed over the batch (zero in
    the rows outside the mask)."""
    summed = grad_elements.reshape(grad_elements.shape[0], -1, n).sum(1)
    return full_param_grads(summed, param_mask)


UNUSED_TAU_SYN = 1.0
"""The packed ``tau_syn`` row of a model without a synapse (``tau_syn=None``): a valid value
that no kernel reads (they read the row only with a synapse)."""

RUNAWAY_CEILING = 10.0
"""A runaway step stores ``V = V_th``: the neuron reached its spike peak within the step.

A step is a runaway when it starts above V_T (after the reset), where the exponential term
outruns the leak (the exponential-Euler factor grows like exp(dt*J), and past the exponent
clamp F alone is ~delta_T*e^20/tau), and would land above
``V_th + RUNAWAY_CEILING * (V_th - V_reset)`` or on NaN. That is where BrainPy's arithmetic
blows up (spec sections 11 and 13): V jumps to 1e7..1e38 mV or +inf, a hard reset then gives
0 or NaN, a soft reset runs away, and w integrates the absurd V. adex instead registers the
spike at V_th, resets normally on the next step, integrates w with V = V_th, and passes no
gradient through V on that step (V is a constant there). Everything else is BrainPy's
arithmetic unchanged: every step that lands at or below the ceiling, every step that starts
below V_T (a large input alone never triggers it), and LIF, which has no exponential term.

Why 10: in non-stiff use the overshoot past V_th stays within a few (V_th - V_reset) (the
BrainPy ExpIF V_th = -40 mV case reaches 2.3); stiff steps overshoot by 20 to 1e30 widths.
With V_th at the spike peak of Naud et al. (2008) a ceiling of 1000 widths let such steps
through and their w kick (a * (V - V_rest)) destroyed the published firing patterns; 10
reproduces them (tonic, adapting, bursting, delayed accelerating, irregular).

The backward kernel recognises a runaway step as "stored V == V_th and V' > V_T"; a
non-runaway step that lands exactly on V_th from above V_T is treated the same (a
measure-zero coincidence; no resting state lies above V_T with V_th above it).
"""


@dataclass(frozen=True)
class AdExParams:
    """The AdEx parameters in canonical units (mV, ms, mA, ohm, S).

    Each field is a Python float (shared by every neuron) or a tensor broadcastable to the
    layer's ``in_size`` (per-neuron values). ExpIF and LIF ignore the fields they lack
    (``tau_w``, ``a``, ``b``; LIF also ``V_T``, ``delta_T``). ``tau_syn`` (ms, > 0) is the
    synaptic time constant of the models with a synaptic current, None without one.
    """

    R: ParamValue = 1.0
    tau: ParamValue = 10.0
    tau_w: ParamValue = 30.0
    V_th: ParamValue = -55.0
    V_reset: ParamValue = -68.0
    V_rest: ParamValue = -65.0
    V_T: ParamValue = -59.9
    delta_T: ParamValue = 3.48
    a: ParamValue = 1.0
    b: ParamValue = 1.0
    tau_syn: ParamValue | None = None

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_values(cls, values: Mapping[str, Any], in_size: tuple[int, ...]) -> AdExParams:
        """Build from user values (quantities, numbers, arrays or tensors), validated.

        Quantities are converted to canonical units; plain numbers are taken as canonical.
        Arrays/tensors must broadcast to ``in_size``. Raises ``ValueError`` naming the
        argument on a wrong unit, shape or a non-finite value.
        """
        converted: dict[str, ParamValue] = {}
        for name, value in values.items():
            if name not in PARAM_KINDS:
                raise TypeError(f"unknown AdEx parameter {name!r}")
            if name == "tau_syn" and value is None:  # no synaptic current
                converted[name] = None
                continue
            magnitude = to_canonical(value, PARAM_KINDS[name], name)
            converted[name] = _as_param(magnitude, name, in_size)
        return cls(**converted)

    @classmethod
    def trusted(cls, values: Mapping[str, ParamValue]) -> AdExParams:
        """Build from canonical values that were validated already (no checks, no host
        sync): the modules' per-call parameters, whose constraints are checked on the
        packed tensor (:func:`learnable_violations`)."""
        if torch.compiler.is_compiling():  # traced: the plain constructor (its tensor checks
            return cls(**values)  # are skipped while tracing)
        params = object.__new__(cls)
        for name, default in _DEFAULTS.items():
            object.__setattr__(params, name, values.get(name, default))
        return params

    def n_neurons(self) -> int:
        """Neurons per sample of the per-neuron values (1 when every value is a scalar).
        Raises ``ValueError`` when per-neuron values disagree in shape."""
        shape = self.neuron_shape()
        return 1 if shape is None else math.prod(shape)

    def neuron_shape(self) -> tuple[int, ...] | None:
        """The shape of the per-neuron (non-scalar tensor) values, or None without any.
        Raises ``ValueError`` when they disagree."""
        shapes = {
            tuple(v.shape) for _, v in self.items() if isinstance(v, torch.Tensor) and v.dim() > 0
        }
        if len(shapes) > 1:
            raise ValueError(f"per-neuron parameters disagree in shape: {sorted(shapes)}")
        return shapes.pop() if shapes else None

    def items(self) -> list[tuple[str, ParamValue]]:
        """(name, value) pairs in field order, without a ``tau_syn`` of None (no synapse)."""
        pairs = [(f.name, getattr(self, f.name)) for f in fields(self)]
        return [(k, v) for k, v in pairs if v is not None]

    def validate(self) -> None:
        """Raise ``ValueError`` where the model would be invalid.

        Requires R != 0, tau > 0, tau_w > 0, delta_T > 0, tau_syn > 0 (unless None) and
        V_th > V_reset (models that do not use tau_w or delta_T keep their valid defaults).
        Learnable parameters are checked again before every call, so an optimizer step that
        breaks a constraint raises here instead of producing NaN.
        """
        _require(self.R, lambda v: v != 0, "R", "non-zero (with R = 0 the input has no effect)")
        _require(self.tau, lambda v: v > 0, "tau", "> 0 ms")
        _require(self.tau_w, lambda v: v > 0, "tau_w", "> 0 ms")
        _require(self.delta_T, lambda v: v > 0, "delta_T", "> 0 mV")
        if self.tau_syn is not None:
            _require(self.tau_syn, lambda v: v > 0, "tau_syn", "> 0 ms")
        theta = _minus(self.V_th, self.V_reset)
        _require(theta, lambda v: v > 0, "V_th", "> V_reset (V_th - V_reset > 0 mV)")
        for name, value in self.items():
            _require(value, _finite, name, "finite")

    def packed(self, n_neurons: int, device: torch.device,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:  # fmt: skip
        """All parameters as one contiguous tensor ``[N_PARAMS, n_neurons]`` in ``dtype``
        (float32: the Triton kernels'; float64 for the CPU kernels' float64 path); a
        ``tau_syn`` of None packs as :data:`UNUSED_TAU_SYN`.

        The fused kernels index it with ``neuron = flat_state_index % n_neurons``. It is
        differentiable in the parameters that require grad (learnable parameters).
        """
        rows = []
        for name in PARAM_KINDS:
            value = getattr(self, name)
            value = UNUSED_TAU_SYN if value is None else value
            if isinstance(value, torch.Tensor):
                row = value.to(device=device, dtype=dtype).reshape(-1)
                if row.numel() != n_neurons:
                    row = row.expand(n_neurons) if row.numel() == 1 else None
                if row is None:
                    raise ValueError(f"{name}: {tuple(value.shape)} is not per-neuron")
                rows.append(row)
            else:
                rows.append(torch.full((n_neurons,), float(value), device=device, dtype=dtype))
        return torch.stack(rows).contiguous()

    def cast(self, dtype: torch.dtype, device: torch.device) -> dict[str, ParamValue]:
        """The parameters as a dict, tensors moved to ``dtype``/``device``, floats kept."""
        out: dict[str, ParamValue] = {}
        for name, value in self.items():
            if isinstance(value, torch.Tensor):
                out[name] = value.to(device=device, dtype=dtype)
            else:
                out[name] = value
        return out


_DEFAULTS = {f.name: f.default for f in fields(AdExParams)}

PACKED_ROWS = {name: row for row, name in enumerate(PARAM_KINDS)}
"""Row of each parameter in the packed ``[N_PARAMS, N]`` layout (``AdExParams`` field
order)."""


class PackedParams(NamedTuple):
    """The packed parameters of a layer's call, with the learnable tensors kept apart so
    that the fused backward can hand each its gradient directly (no autograd graph of the
    packing itself).

    Attributes:
        values: ``[N_PARAMS, N]`` fp32, not differentiable: every parameter's current value.
        rows: ``[k]`` int64 rows of ``values`` that hold the learnable parameters (on
            ``values``' device).
        learnable: the k learnable tensors (shape ``()`` or ``in_size``, any float dtype),
            in ``rows`` order.
        grad_slots: for each learnable tensor, its row in the backward's compact
            per-element gradients (see :func:`grad_rows`; the layer's ``param_mask`` holds
            exactly the learnable rows).
        direct: every learnable tensor is a 0-dim float32 tensor and ``grad_slots`` is
            ``0, 1, ...``: their gradients are the compact rows' sums as they come.
    """

    values: torch.Tensor
    rows: torch.Tensor
    learnable: tuple[torch.Tensor, ...]
    grad_slots: tuple[int, ...]
    direct: bool = False

    def grads(self, grad_elements: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The learnable tensors' gradients from the compact per-element parameter
        gradients ``[k', *S]`` of the fused backward (one row per learnable packed row),
        summed over the batch, and over the neurons for a scalar parameter: one reduction
        for all of them, then a view each."""
        n = self.values.shape[1]
        if n == 1:  # every parameter one value: [k'] sums
            d = grad_elements.dim()  # (a sum over dims () would sum over all of them)
            sums = grad_elements.sum(tuple(range(1, d))) if d > 1 else grad_elements
            sums = sums.unbind(0)
            if self.direct:  # each a 0-dim float32 tensor, in slot order: the sums themselves
                return sums
        else:  # per neuron, summed over the batch: [k', n]
            sums = grad_elements.reshape(grad_elements.shape[0], -1, n).sum(1).unbind(0)
        out = []
        for slot, p in zip(self.grad_slots, self.learnable, strict=True):
            g = sums[slot]
            if n == 1:
                g = g if p.dim() == 0 else g.reshape(p.shape)
            else:  # a scalar among per-neuron rows: summed over the neurons too
                g = g.view(p.shape) if p.numel() == n else g.sum().reshape(p.shape)
            out.append(g if g.dtype == p.dtype else g.to(p.dtype))
        return tuple(out)

    def differentiable(self) -> torch.Tensor:
        """``values`` with the learnable rows written in differentiably (``[N_PARAMS, N]``)."""
        rows = learnable_rows(self.learnable, self.values.shape[1])
        return self.values.index_copy(0, self.rows, rows)


def learnable_rows(learnable: tuple[torch.Tensor, ...], n: int) -> torch.Tensor:
    """The learnable tensors (shape ``()`` or ``in_size``) as packed rows ``[k, n]`` fp32
    (scalars broadcast over the ``n`` neurons), differentiable."""
    k = len(learnable)
    if all(p.dim() == 0 for p in learnable):  # scalars: one stack, one broadcast
        rows = torch.stack(learnable).view(k, 1)
        rows = rows if rows.dtype == torch.float32 else rows.to(torch.float32)
        return rows if n == 1 else rows.expand(k, n)
    return torch.stack([p.to(torch.float32).reshape(-1).expand(n) for p in learnable])


def learnable_violations(values: torch.Tensor, checks: LearnableChecks) -> torch.Tensor:
    """A 0-dim fp32 tensor, finite when the packed parameters ``values`` ``[N_PARAMS, N]``
    keep every constraint a learnable parameter can break (finite; tau, tau_w, delta_T,
    tau_syn > 0; V_th > V_reset) and NaN or inf when one breaks: :meth:`AdExParams.validate`'s
    rules as a few small ops over the whole packed tensor, without a host sync."""
    # log(v) is finite exactly when 0 < v < inf (learnable positive rows); log(0 * v + 1)
    # exactly when v is finite (the other rows; fixed ones are finite by construction)
    total = torch.addcmul(checks.offset, values, checks.scale).log_().sum()
    if checks.ordered:
        r = PACKED_ROWS
        total = total + (values[r["V_th"]] - values[r["V_reset"]]).log().sum()
    return total


class LearnableChecks(NamedTuple):
    """Which constraints the learnable parameters of a layer can break (fixed ones were
    validated at construction): ``scale`` and ``offset`` ``[N_PARAMS, 1]`` are 1 and 0 in the
    rows of learnable parameters that must stay > 0 (tau, tau_w, delta_T, tau_syn), 0 and 1 in
    every other row; ``ordered`` is True when V_th or V_reset is learnable."""

    scale: torch.Tensor
    offset: torch.Tensor
    ordered: bool

    @staticmethod
    def of(learnable: tuple[str, ...], device: torch.device) -> LearnableChecks:
        """The checks for the learnable parameter names."""
        positive = ("tau", "tau_w", "delta_T", "tau_syn")
        scale = torch.tensor([float(k in learnable and k in positive) for k in PARAM_KINDS],
                             device=device).reshape(-1, 1)  # fmt: skip
        ordered = "V_th" in learnable or "V_reset" in learnable
        return LearnableChecks(scale, 1.0 - scale, ordered)


def _as_param(value: Any, name: str, in_size: tuple[int, ...]) -> ParamValue:
    """A float, or a float64 tensor broadcast to ``in_size``; checks finiteness and shape."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or an array, got a bool")
    if isinstance(value, int | float | np.floating | np.integer):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
        return value
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.asarray(value, dtype=np.float64))
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a number, array, tensor or quantity, got {type(value)}")
    if value.is_complex() or not (value.is_floating_point() or value.dtype in _INT_DTYPES):
        raise TypeError(f"{name} must be a real tensor, got dtype {value.dtype}")
    tensor = value.detach().to(torch.float64)
    if tensor.numel() == 1:
        scalar = float(tensor.reshape(()))
        return _as_param(scalar, name, in_size)
    try:
        shape = torch.broadcast_shapes(tuple(tensor.shape), in_size)
    except RuntimeError:
        shape = None
    if shape != tuple(in_size):
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)}, which does not broadcast to "
            f"in_size {tuple(in_size)}"
        )
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} must be finite everywhere")
    return tensor.expand(in_size).contiguous()


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _finite(value: ParamValue):
    return torch.isfinite(value) if isinstance(value, torch.Tensor) else math.isfinite(value)


def _minus(a: ParamValue, b: ParamValue) -> ParamValue:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        device = a.device if isinstance(a, torch.Tensor) else b.device
        a = torch.as_tensor(a, device=device).detach().to(torch.float64)
        return a - torch.as_tensor(b, device=device).detach().to(torch.float64)
    return a - b


def _require(value: ParamValue, ok, name: str, expected: str) -> None:
    # a compiled graph cannot branch on tensor values (data-dependent), nor on floats that
    # torch.compile(dynamic=True) made symbolic; the values were checked eagerly
    if torch.compiler.is_compiling():
        return
    if isinstance(value, torch.Tensor):  # one host sync; the message only on failure
        value = value.detach()
        if value.device.type == "meta":  # meta tensors have no values
            return
        if bool(ok(value).all()):
            return
        raise ValueError(f"{name} must be {expected}, got min {value.min().item():g}")
    if not ok(value):
        raise ValueError(f"{name} must be {expected}, got {value:g}")
