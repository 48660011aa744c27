"""Shared test utilities: comparison with diagnostics, BrainPy fixture loading."""

from __future__ import annotations

import json
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
