"""Shared test utilities: comparison with diagnostics, BrainPy fixture loading."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

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
        # V_th = -45 mV keeps ExpIF's exponential-Euler step stable (spec section 11)
        "ExpIF": ModelCase(adex.ExpIF, dict(V_th=-45.0), 40.0, 10.0, (-64.0, -44.0)),
        "ExpIFRef": ModelCase(
            adex.ExpIFRef, dict(V_th=-45.0, tau_ref=tau_ref), 40.0, 10.0, (-64.0, -44.0)
        ),
        "LIF": ModelCase(adex.LIF, {}, 8.0, 3.0, (-0.5, 1.3)),
    }
