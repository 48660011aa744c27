"""CI gate of the real compiler (``benchmarks/static_roofline.py --set ci``): AdExIF and
AdExIFRef, forward and backward, fp32 and bf16, learnable, compiled for sm_90 and sm_80 on
this CPU machine. Fails on a compile error, a spill on sm_90, or an AdExIF time loop over
its SASS budget (sm_90, Triton >= 3.6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "static_roofline.py"

triton = pytest.importorskip("triton")
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
pytestmark = pytest.mark.skipif(not PTXAS.exists(), reason="the triton wheel ships no ptxas")
sys.path.insert(0, str(ROOT / "benchmarks"))
import static_roofline  # noqa: E402


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("roofline") / "ci.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--set", "ci", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    return data, {(r["variant"], r["arch"]): r for r in data["rows"]}


def test_ci_set_compiles_without_sm90_spills(rows):
    _, by_key = rows
    assert len(by_key) == 2 * len(static_roofline.CI_SET)
    for (name, arch), r in by_key.items():
        assert "error" not in r, f"{name} sm_{arch}: {r.get('error')}"
        assert r["sass_per_ns"] > 10 and r["bytes_per_ns"] > 0, name
        if arch == 90:
            assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{name} spills on sm_90"


@pytest.mark.parametrize("name", static_roofline.BUDGETED)
def test_time_loop_within_budget(rows, name):
    data, by_key = rows
    if not data["budgets_apply"]:
        pytest.skip(f"the budgets are for Triton >= 3.6, this is {data['triton']}")
    r = by_key[name, 90]
    assert r["sass_per_ns"] <= static_roofline.BUDGETS[r["kind"]], (name, r["sass_per_ns"])


def test_plain_backward_registers(rows):
    """The AdExIF fp32 backward fits 64 registers on sm_90 (50% occupancy)."""
    _, by_key = rows
    assert by_key["AdExIF bwd fp32", 90]["regs"] <= 64
