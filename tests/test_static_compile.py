"""The real Triton compiler (not the interpreter) compiles every scan kernel configuration
for sm_90 and sm_80 on this CPU machine: no spills, a time loop found in the SASS, and the
per-step loads and stores the bytes model counts (``benchmarks/static_compile.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "static_compile.py"

triton = pytest.importorskip("triton")
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
pytestmark = pytest.mark.skipif(not PTXAS.exists(), reason="the triton wheel ships no ptxas")

# per-step global loads / stores of the time loop (per thread: one load or store instruction
# per tensor and step): forward x / spikes + V; backward V + spike grads / x grads; with
# every parameter gradient also the stored w (only the tau_w gradient reads it: a layer
# learning tau and b does not)
LOADS_STORES = {"fwd": (1, 2), "bwd": (2, 1), "bwd_param": (3, 1), "bwd_param_no_tau_w": (2, 1)}


@pytest.mark.parametrize("arch", [90, 80])
def test_kernels_compile_for_nvidia_targets(arch, tmp_path):
    out = tmp_path / "static.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--arch", str(arch), "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) >= 5
    for row in rows:
        name = row["config"]
        assert 0 < row["regs"] <= 255, name
        assert row["spill_stores"] == 0 and row["spill_loads"] == 0, f"{name} spills"
        assert row["loop_sass"] > 50 and row["loop_fchk"] == 0, name
        kind = "fwd" if name.startswith("fwd") else "bwd_param" if "PARAM" in name else "bwd"
        if kind == "bwd_param" and "tau,b" in name:
            kind = "bwd_param_no_tau_w"
        assert (row["loop_ldg"], row["loop_stg"]) == LOADS_STORES[kind], name
