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


SPILL_SNIPPET = """
import json, os, sys
os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, "benchmarks")
import static_compile as sc
fwd, bwd = sc.load_kernels(sc.REPO / "kernels")
cfg = sc.Config("bwd fp32 PARAM_GRAD", "bwd", sc.torch.float32, param_grad=True)
args, kwargs = sc.launch_args(bwd, cfg)
rows = [sc.inspect_launch(bwd, cfg.name, args, dict(kwargs, maxnreg=r), 90) for r in (40, 255)]
print(json.dumps([{k: r[k] for k in ("regs", "spill_stores", "spill_loads")} for r in rows]))
"""


def test_ptxas_report_of_a_spilling_kernel():
    """The registers and spills read from the ptxas report of the real compile: the backward
    with every parameter gradient (over 100 registers) capped at 40 registers spills, and
    capped at 255 it does not."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", SPILL_SNIPPET], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    capped, free = json.loads(proc.stdout.strip().splitlines()[-1])
    assert capped["regs"] <= 40 and capped["spill_stores"] > 0 and capped["spill_loads"] > 0
    assert free["regs"] > 40 and free["spill_stores"] == free["spill_loads"] == 0


def test_ptxas_report_parser_sums_every_function():
    """Registers of the entry function; spills of all its functions (a subroutine listed
    before the entry spills too)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from static_compile import ptxas_usage

    log = (
        "ptxas info    : Function properties for __slow_path\n"
        "    16 bytes stack frame, 1200 bytes spill stores, 1404 bytes spill loads\n"
        "ptxas info    : Compiling entry function '_k' for 'sm_90a'\n"
        "ptxas info    : Function properties for _k\n"
        "    424 bytes stack frame, 596 bytes spill stores, 664 bytes spill loads\n"
        "ptxas info    : Used 24 registers, used 0 barriers, 424 bytes cumulative stack size\n"
    )
    assert ptxas_usage(log, "_k") == dict(regs=24, spill_stores=1796, spill_loads=2068,
                                          stack=424)  # fmt: skip
    with pytest.raises(RuntimeError, match="no ptxas -v report"):
        ptxas_usage(log, "_other")
