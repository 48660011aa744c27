"""Shared test utilities: comparison with diagnostics, running one computation on both
backends (or other variants) and comparing, BrainPy fixture loading."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import adex
from adex.params import AdExParams

FIXTURES = Path(__file__).parent / "data" / "brainpy"


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, atol: float, rtol: float = 0.0):
    """Fail with max-abs error and location if ``out`` differs from ``ref`` (NaN checked first)."""
    ref = ref.detach().double().cpu()
    out = out.detach().double().cpu()
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert not torch.isnan(out).any(), f"{name}: output has NaN ({int(torch.isnan(out).sum())})"
    err = (out - ref).abs()
    bound = atol + rtol * ref.abs()
    bad = err > bound
    if bad.any():
        i = int(torch.argmax((err - bound).reshape(-1)))
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{err.numel()} elements off; worst at flat index {i}: "
            f"ref {ref.reshape(-1)[i].item():.6g} out {out.reshape(-1)[i].item():.6g} "
            f"(max abs err {err.max().item():.3g}, atol {atol:.3g}, rtol {rtol:.3g})"
        )


# -- one computation on both backends ----------------------------------------------------------

BACKENDS = ("reference", "triton")
# variant name -> keyword arguments of ``build``; the first variant is the one compared against
BACKEND_VARIANTS: dict[str, dict[str, Any]] = {b: {"backend": b} for b in BACKENDS}
STATE_INPUTS = ("x", "V0", "w0")  # what a module built by ``build`` takes


@dataclass(frozen=True)
class Tolerance:
    """How close a compared tensor must be to the reference variant's.

    ``exact``: ``torch.equal``. Otherwise :func:`assert_close` with ``atol`` and ``rtol``;
    ``scaled``: ``atol`` is a fraction of max|reference|, which must be finite and > 0."""

    atol: float = 0.0
    rtol: float = 0.0
    scaled: bool = False
    exact: bool = False


EQUAL = Tolerance(exact=True)


@dataclass
class Run:
    """One variant's run. ``out``: the forward outputs by name, detached. ``grads``: the
    loss's gradients by input name, then module parameter name. ``module``: the module the
    factory built, in its state after the run (None for a function)."""

    out: dict[str, torch.Tensor | None]
    grads: dict[str, torch.Tensor]
    module: torch.nn.Module | None = None


def _outputs(result: Any) -> dict[str, Any]:
    if isinstance(result, Mapping):
        return dict(result)
    if isinstance(result, tuple) and hasattr(result, "_asdict"):  # ScanResult, StateSequence
        return result._asdict()
    raise TypeError(f"expected a NamedTuple or a mapping of outputs, got {type(result)}")


def _run_module(layer, leaves: dict, return_states: bool, chunks: int) -> dict[str, Any]:
    """init_state (batch from x), V0/w0 as the state, ``chunks`` consecutive calls."""
    unknown = set(leaves) - set(STATE_INPUTS)
    if unknown:
        raise TypeError(f"a module takes only {STATE_INPUTS}, got {sorted(unknown)}")
    x = leaves["x"]
    layer.init_state(x.shape[1] if x.dim() > 1 + len(layer.in_size) else None)
    if leaves.get("V0") is not None:
        layer.V = leaves["V0"]
    if leaves.get("w0") is not None:
        layer.w = leaves["w0"]
    parts = [x] if chunks == 1 else list(x.chunk(chunks))
    outs = [layer(part, return_states=return_states) for part in parts]

    def cat(ts):
        return ts[0] if len(ts) == 1 or ts[0] is None else torch.cat(ts)

    if return_states:
        spikes, V, w = (cat([getattr(o, k) for o in outs]) for k in ("spikes", "V", "w"))
    else:
        spikes, V, w = cat(outs), layer.V, layer.w
    return {"spikes": spikes, "V": V, "w": w, "last_spike_time": layer.last_spike_time}


def run_variant(
    build: Callable[..., Any],
    variant: Mapping[str, Any],
    inputs: Mapping[str, torch.Tensor | None],
    cotangents: Mapping[str, torch.Tensor] | None = None,
    *,
    wrt: Iterable[str] | None = None,
    dtype: torch.dtype | None = None,
    return_states: bool = True,
    chunks: int = 1,
) -> Run:
    """Run ``build(**variant)`` once on ``inputs``; the building block of
    :func:`compare_backends` (see there), also for a single backend."""
    wrt = tuple(inputs) if wrt is None and cotangents else tuple(wrt or ())
    unknown = [k for k in wrt if k not in inputs]
    if unknown:
        raise KeyError(f"wrt names {unknown} that are not inputs {list(inputs)}")
    target = build(**variant)
    is_module = isinstance(target, torch.nn.Module)
    inputs = dict(inputs)
    if is_module and not target.has_w:  # no w: w0 is not an input (and has no gradient)
        inputs.pop("w0", None)
    leaves: dict[str, torch.Tensor | None] = {}
    for name, t in inputs.items():
        if t is not None:
            t = t.detach()  # a view of the caller's tensor: same values and layout
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            if name in wrt:
                t.requires_grad_(True)
        leaves[name] = t
    if is_module:
        out = _run_module(target, leaves, return_states, chunks)
        params = dict(target.named_parameters())
    else:
        out = _outputs(target(**leaves))
        params = {}
    grads: dict[str, torch.Tensor] = {}
    if cotangents:
        terms = [(out[k] * c.to(out[k].device)).sum() for k, c in cotangents.items()
                 if out[k] is not None]  # fmt: skip
        loss = sum(terms[1:], terms[0])
        targets = {k: t for k, t in leaves.items() if k in wrt and t is not None} | params
        values = torch.autograd.grad(loss, list(targets.values()))
        grads = dict(zip(targets, values, strict=True))
    detached = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
    return Run(detached, grads, target if is_module else None)


def _check(name: str, ref: torch.Tensor | None, out: torch.Tensor | None, tol: Tolerance):
    if ref is None or out is None:
        assert ref is None and out is None, f"{name}: {'ref' if out is not None else 'out'} is None"
        return
    if tol.exact:
        if not torch.equal(ref, out):
            n = int((ref != out).sum()) if ref.shape == out.shape else "shapes differ:"
            raise AssertionError(f"{name}: not equal ({n} of {tuple(ref.shape)})")
        return
    atol = tol.atol
    if tol.scaled:
        scale = float(ref.detach().abs().max())
        assert math.isfinite(scale) and scale > 0, f"{name}: max |reference| is {scale}"
        atol *= scale
    assert_close(name, ref, out, atol, tol.rtol)


def assert_runs_close(ref: Run, run: Run, tol: Mapping[str, Tolerance], label: str = "") -> None:
    """``tol`` by output name, ``'grad_<input or parameter>'`` for one gradient and ``'grads'``
    for every gradient without its own entry (both runs must have the same gradients).
    An output that is None must be None in both runs."""
    prefix = f"{label}: " if label else ""
    if "grads" in tol or any(k.startswith("grad_") for k in tol):
        same = ref.grads.keys() == run.grads.keys()
        assert same, f"{prefix}gradients of {list(ref.grads)} vs {list(run.grads)}"
    for key, t in tol.items():
        if key == "grads":
            for g in ref.grads:
                if f"grad_{g}" not in tol:
                    _check(f"{prefix}grad_{g}", ref.grads[g], run.grads[g], t)
        elif key.startswith("grad_"):
            _check(f"{prefix}{key}", ref.grads[key[5:]], run.grads[key[5:]], t)
        else:
            _check(f"{prefix}{key}", ref.out[key], run.out[key], t)


def compare_backends(
    build: Callable[..., Any],
    inputs: Mapping[str, torch.Tensor | None],
    cotangents: Mapping[str, torch.Tensor] | None = None,
    *,
    tol: Mapping[str, Tolerance] | None = None,
    wrt: Iterable[str] | None = None,
    variants: Mapping[str, Mapping[str, Any]] = BACKEND_VARIANTS,
    dtypes: Mapping[str, torch.dtype] | None = None,
    return_states: bool = True,
    chunks: int = 1,
) -> dict[str, Run]:
    """Run the same computation under each variant (by default ``backend='reference'``,
    then ``backend='triton'``) on identical inputs and cotangents; return ``{variant: Run}``
    and, with ``tol``, assert that every later variant matches the first.

    ``build(**variant)`` returns either

    * a module (a :class:`adex.SpikingNeuron`): ``init_state`` (batch from ``inputs['x']``
      ``[T, batch, *in_size]``, or no batch), ``V0`` / ``w0`` assigned as the state when
      given (``w0`` dropped for a model without w), then ``chunks`` consecutive calls on
      ``x`` with ``return_states``; outputs ``spikes``, ``V``, ``w`` (the sequences, or
      the final state without ``return_states``) and ``last_spike_time``; the gradients
      include every ``named_parameters()`` of the module; or
    * a function, called with the inputs as keywords (e.g. ``functools.partial(
      adex.adex_scan, backend=backend)``), returning a NamedTuple (``ScanResult``) or a
      mapping of outputs.

    Each variant gets its own leaves: a detached view of each input (same values and
    layout), cast to ``dtypes[variant]`` if given (every floating input), requiring grad
    if named in ``wrt`` (default: every input when there are cotangents, else none).
    With ``cotangents`` (output name -> tensor), the loss ``sum((out[k] * c).sum())`` over
    the outputs that are not None is differentiated w.r.t. those leaves (and the module's
    parameters): the gradient reaching an output is its cotangent, cast to its dtype.

    ``tol``: see :func:`assert_runs_close` (only the named quantities are compared)."""
    runs = {
        name: run_variant(build, variant, inputs, cotangents, wrt=wrt,
                          dtype=(dtypes or {}).get(name), return_states=return_states,
                          chunks=chunks)
        for name, variant in variants.items()
    }  # fmt: skip
    if tol:
        (ref_name, ref), *others = runs.items()
        for name, run in others:
            assert_runs_close(ref, run, tol, f"{name} vs {ref_name}")
    return runs


def load_fixture(path: Path) -> tuple[dict, dict]:
    """(arrays, meta) of one BrainPy npz case."""
    data = np.load(path)
    meta = json.loads(str(data["meta"]))
    return {k: data[k] for k in data.files if k != "meta"}, meta


def fixture_params(arrays: dict, meta: dict) -> AdExParams:
    """The case's parameters as AdExParams (per-neuron arrays from ``param_<name>``)."""
    values = {}
    for key, value in meta["params"].items():
        if key not in AdExParams.__dataclass_fields__:
            continue
        arr = arrays.get(f"param_{key}")
        values[key] = torch.tensor(arr, dtype=torch.float64) if arr is not None else value
    return AdExParams(**values)


def fixture_surrogate(meta: dict) -> adex.surrogate.Surrogate:
    """The case's surrogate spike function."""
    spec = meta["surrogate"]
    return getattr(adex.surrogate, spec["name"])(**spec["kwargs"])


@dataclass(frozen=True)
class ModelCase:
    """One model of the family with inputs (mA) and initial V (mV) that make it spike."""

    cls: type
    kwargs: dict = field(default_factory=dict)
    x_mean: float = 60.0
    x_std: float = 15.0
    V0_range: tuple[float, float] = (-62.0, -50.0)

    @property
    def has_w(self) -> bool:
        return self.cls.has_w

    @property
    def has_ref(self) -> bool:
        return self.cls.has_ref


def family_cases(tau_ref: float) -> dict[str, ModelCase]:
    """Every model of the family at dt = 0.2 ms, the Ref models with ``tau_ref`` (ms)."""
    return {
        "AdExIF": ModelCase(adex.AdExIF),
        "AdExIFRef": ModelCase(adex.AdExIFRef, dict(tau_ref=tau_ref)),
        "AdLIF": ModelCase(adex.AdLIF),
        "AdLIFRef": ModelCase(adex.AdLIFRef, dict(tau_ref=tau_ref)),
        # V_th = -45 mV keeps ExpIF's exponential-Euler step stable (spec section 11)
        "ExpIF": ModelCase(adex.ExpIF, dict(V_th=-45.0), 40.0, 10.0, (-64.0, -44.0)),
        "ExpIFRef": ModelCase(
            adex.ExpIFRef, dict(V_th=-45.0, tau_ref=tau_ref), 40.0, 10.0, (-64.0, -44.0)
        ),
        "LIF": ModelCase(adex.LIF, {}, 8.0, 3.0, (-0.5, 1.3)),
    }
