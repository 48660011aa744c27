"""Static roofline of the fused scan kernels: compiled code (no GPU) against the bytes model.

Usage::

    python benchmarks/static_roofline.py                 # every variant, sm_90 and sm_80
    python benchmarks/static_roofline.py --arch 90 --set ci --check   # the CI set, budgets
    python benchmarks/static_roofline.py --only Ref --json roofline.json

Each variant (:data:`VARIANTS`: every model, forward and backward, fp32/bf16, inference and
1-byte spikes, learnable parameters, checkpoint mode, GPU_STAGES) is compiled for the target
with ``benchmarks/static_compile.py`` (the real Triton compiler, ptxas and cuobjdump of the
wheel; BLOCK = 256, 4 warps: 2 neurons per thread) and printed with:

- ``regs``, ``spills`` (ptxas ``-v``), ``smem`` (shared memory per program, bytes) and
  ``occ``: the occupancy those allow, resident warps / 64 per SM (65536 registers per SM
  allocated per warp in units of 256, at most 32 programs per SM, shared memory per SM
  :data:`SMEM_PER_SM` with 1 KiB reserved per program).
- ``SASS/ns``: SASS instructions per neuron-step of the time loop, the loop's count over
  the 2 neurons a thread carries and over the steps one iteration runs (ptxas unrolls
  some short loops: LIF's forward 4x; :func:`per_step`); in checkpoint mode the backward's
  recompute loop and adjoint loop together (both run once per neuron-step). ``div/ns``: of
  those, MUFU.RCP (each fp32 division or reciprocal is one); ``MUFU/ns``: all MUFU (exp
  is EX2).
- ``B/ns``: bytes per neuron-step of the bytes model (``benchmarks/bytes_model.py``; DRAM
  only, checkpoint scratch assumed to stay in L2).
- ``issue/HBM``: the time to issue the loop's instructions over the time to move its bytes,
  at the card's peak rates (:data:`CARDS`: one warp-instruction per scheduler per clock,
  4 schedulers per SM; the HBM bandwidth). Above 1 the loop cannot reach the bandwidth
  roofline even with perfect latency hiding; ``est %BW`` = min(100, 100 / ratio) is then
  the bound on the fraction of the copy bandwidth it can reach (a bound, not a prediction:
  latency, occupancy and the memory system all cost more; only a card measures).

The budgets (:data:`BUDGETS` for the :data:`BUDGETED` AdExIF variants, sm_90 with Triton
>= 3.6) are checked with ``--check``: a variant over its SASS budget, a spill on sm_90 or a
compile error exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bytes_model
import static_compile as sc

F32, BF16, U8 = torch.float32, torch.bfloat16, torch.uint8
TAU_B = (1 << 1) | (1 << 9)  # adex.AdExIF(..., learnable=("tau", "b"))
TAU_W = 1 << 2  # learnable tau_w: the forward stores w, the backward reads it
K = bytes_model.DEFAULT_K  # checkpoint interval


def _variants() -> tuple[sc.Config, ...]:
    c = sc.Config
    rows = [
        c("AdExIF fwd fp32", "fwd", F32),
        c("AdExIF fwd bf16", "fwd", BF16),
        c("AdExIF fwd fp32 no grad", "fwd", F32, needs_grad=False),
        c("AdExIF fwd fp32 check_finite", "fwd", F32, check=True),
        c("AdExIF fwd bf16 check_finite", "fwd", BF16, check=True),
        c("AdExIF fwd fp32 no grad check_finite", "fwd", F32, needs_grad=False, check=True),
        c("AdExIF fwd fp32 no grad uint8 spikes", "fwd", F32, needs_grad=False, spike_dtype=U8),
        c("AdExIF fwd bf16 no grad uint8 spikes", "fwd", BF16, needs_grad=False, spike_dtype=U8),
        c("AdExIF fwd fp32 learnable tau_w", "fwd", F32, True, TAU_W),
        c(f"AdExIF fwd fp32 checkpoint K={K}", "fwd", F32, checkpoint=K),
        c("AdExIF fwd fp32 GPU_STAGES=2", "fwd", F32, stages=2),
        c("AdExIF bwd fp32", "bwd", F32),
        c("AdExIF bwd bf16", "bwd", BF16),
        c("AdExIF bwd fp32 learnable tau,b", "bwd", F32, True, TAU_B),
        c("AdExIF bwd fp32 learnable (all ten)", "bwd", F32, True),
        c("AdExIF bwd bf16 learnable (all ten)", "bwd", BF16, True),
        c("AdExIF bwd fp32 learnable tau_w", "bwd", F32, True, TAU_W),
        c(f"AdExIF bwd fp32 checkpoint K={K}", "bwd", F32, checkpoint=K),
        c(f"AdExIF bwd fp32 tau,b checkpoint K={K}", "bwd", F32, True, TAU_B, checkpoint=K),
        c("AdExIF bwd fp32 GPU_STAGES=2", "bwd", F32, stages=2),
        c("AdExIF bwd fp32 spike grad one row", "bwd", F32, gspk_row=True),
        c(
            "AdExIF bwd fp32 learnable tau,b spike grad one row",
            "bwd",
            F32,
            True,
            TAU_B,
            gspk_row=True,
        ),
    ]
    for model in ("AdExIFRef", "ExpIF", "ExpIFRef", "LIF"):
        rows += [
            c(f"{model} fwd fp32", "fwd", F32, model=model),
            c(f"{model} fwd bf16", "fwd", BF16, model=model),
            c(f"{model} bwd fp32", "bwd", F32, model=model),
            c(f"{model} bwd fp32 learnable (all ten)", "bwd", F32, True, model=model),
        ]
    rows.append(c("AdExIFRef bwd bf16", "bwd", BF16, model="AdExIFRef"))
    return tuple(rows)


VARIANTS = _variants()
"""Every variant of the full table."""

CI_SET = (
    "AdExIF fwd fp32", "AdExIF fwd bf16", "AdExIF bwd fp32", "AdExIF bwd bf16",
    "AdExIF bwd fp32 learnable tau,b", "AdExIF bwd fp32 learnable (all ten)",
    "AdExIFRef fwd fp32", "AdExIFRef fwd bf16", "AdExIFRef bwd fp32", "AdExIFRef bwd bf16",
    "AdExIFRef bwd fp32 learnable (all ten)",
)  # fmt: skip
"""The set the CI test compiles (``--set ci``): AdExIF and one refractory model, forward
and backward, fp32 and bf16, learnable."""

BUDGETS = {"fwd": 60.0, "bwd": 100.0, "bwd learnable": 170.0}
"""SASS per neuron-step of the time loop allowed on sm_90 (Triton >= 3.6), by kind: the
AdExIF forward (fp32 and bf16), backward, and backward with parameter gradients."""

BUDGETED = (
    "AdExIF fwd fp32", "AdExIF fwd bf16", "AdExIF bwd fp32", "AdExIF bwd bf16",
    "AdExIF bwd fp32 learnable tau,b", "AdExIF bwd fp32 learnable (all ten)",
)  # fmt: skip
"""The variants the budgets apply to (the other models, checkpoint mode and GPU_STAGES are
reported, not budgeted)."""

CARDS = {
    # peak issue: SMs x 4 schedulers x 32 threads x boost clock; HBM: datasheet bandwidth
    90: dict(card="H100 SXM5", sms=132, clock_ghz=1.98, hbm_tbs=3.35),
    80: dict(card="A100 SXM4 80GB", sms=108, clock_ghz=1.41, hbm_tbs=2.039),
}
"""The reference card of each target (vendor datasheet figures)."""

SMEM_PER_SM = {90: 228 * 1024, 80: 164 * 1024}
"""Shared memory per SM (bytes) of sm_90 / sm_80."""


def occupancy(regs: int, shared: int, warps: int, arch: int) -> float:
    """Resident warps per SM / 64 for ``warps`` per program (see the module docstring)."""
    per_warp = math.ceil(regs * 32 / 256) * 256
    by_regs = (65536 // per_warp) // warps
    by_smem = SMEM_PER_SM[arch] // (shared + 1024) if shared else 32
    programs = min(by_regs, by_smem, 64 // warps, 32)
    return programs * warps / 64


def budget_kind(cfg: sc.Config) -> str:
    """The :data:`BUDGETS` key of a variant."""
    return "fwd" if cfg.kernel == "fwd" else "bwd learnable" if cfg.param_grad else "bwd"


def model_bytes(cfg: sc.Config) -> float:
    """Bytes per neuron-step of the variant (``bytes_model.bytes_per_neuron_step``)."""
    flags = sc.MODELS[cfg.model]
    learnable = flags["HAS_W"] and cfg.param_grad and bool(cfg.param_mask & TAU_W)
    mode = "bwd" if cfg.kernel == "bwd" else "fwd" if cfg.needs_grad else "fwd_nograd"
    total = bytes_model.bytes_per_neuron_step(
        mode, cfg.x_dtype, learnable=learnable, refractory=flags["HAS_REF"],
        spike_dtype=cfg.spike_dtype, checkpoint_every=cfg.checkpoint or None,
        has_w=flags["HAS_W"],
    )  # fmt: skip
    # a spike gradient of one row is read once per neuron, not once per step
    return total - bytes_model.spike_bytes(cfg.x_dtype) if cfg.gspk_row else total


def step_loads(cfg: sc.Config) -> int:
    """Global load instructions per step of the variant's per-step loop (per thread: one per
    tensor, 2 neurons in one vector load): the forward reads x; the backward V and the spike
    gradients, the stored w for a learnable tau_w and the refractory flag byte."""
    if cfg.kernel == "fwd":
        return 1
    flags = sc.MODELS[cfg.model]
    read_w = flags["HAS_W"] and cfg.param_grad and bool(cfg.param_mask & TAU_W)
    return 2 + read_w + flags["HAS_REF"]


def per_step(cfg: sc.Config, inner: list[dict]) -> tuple[float, dict]:
    """``(SASS, MUFU counts)`` per thread and step: the largest innermost loop divided by the
    steps it runs per iteration (its loads over :func:`step_loads`: ptxas unrolls some
    loops, and the remainder loop after them is not counted), plus in checkpoint mode the
    backward's recompute loop (the next largest; one load, x, per step)."""
    loops = [(inner[0], step_loads(cfg))]
    if cfg.kernel == "bwd" and cfg.checkpoint and len(inner) > 1:
        loops.append((inner[1], 1))
    sass, mufu = 0.0, {}
    for loop, loads in loops:
        steps = max(1, loop["ldg"] // loads)
        sass += loop["sass"] / steps
        for k, v in loop["mufu"].items():
            mufu[k] = mufu.get(k, 0) + v / steps
    return sass, mufu


def row(kernels: tuple, cfg: sc.Config, arch: int) -> dict:
    """Compile one variant for ``arch`` and derive its roofline figures."""
    kernel = kernels[cfg.kernel == "bwd"]
    r = sc.inspect_config(kernel, cfg, arch)
    per_thread = sc.BLOCK // (32 * sc.NUM_WARPS)
    card = CARDS[arch]
    issue = card["sms"] * 4 * 32 * card["clock_ghz"] * 1e9  # thread-instructions / s
    sass, mufu = per_step(cfg, r["inner"])
    sass /= per_thread
    nbytes = model_bytes(cfg)
    ratio = (sass / issue) / (nbytes / (card["hbm_tbs"] * 1e12))
    return dict(
        variant=cfg.name, arch=arch, kind=budget_kind(cfg), regs=r["regs"],
        spill_stores=r["spill_stores"], spill_loads=r["spill_loads"], shared=r["shared"],
        occupancy=occupancy(r["regs"], r["shared"], sc.NUM_WARPS, arch), loops=r["inner"],
        sass_per_ns=sass, div_per_ns=mufu.get("RCP", 0) / per_thread,
        mufu_per_ns=sum(mufu.values()) / per_thread, bytes_per_ns=nbytes,
        issue_vs_hbm=ratio, est_bw_pct=min(100.0, 100.0 / ratio), card=card["card"],
    )  # fmt: skip


def problems(r: dict, budgets_apply: bool) -> list[str]:
    """What ``--check`` fails on for one row: an error, a spill on sm_90, a loop over
    budget (sm_90, when the budgets apply to this Triton)."""
    if "error" in r:
        return [f"{r['variant']} sm_{r['arch']}: {r['error'].splitlines()[0]}"]
    out = []
    if r["arch"] == 90 and (r["spill_stores"] or r["spill_loads"]):
        out.append(f"{r['variant']} sm_90 spills {r['spill_stores']}/{r['spill_loads']} B")
    over = r["sass_per_ns"] > BUDGETS[r["kind"]]
    if r["arch"] == 90 and budgets_apply and r["variant"] in BUDGETED and over:
        out.append(f"{r['variant']} sm_90: {r['sass_per_ns']:g} SASS per neuron-step, "
                   f"budget {BUDGETS[r['kind']]:g}")  # fmt: skip
    return out


def markdown(rows: list[dict]) -> str:
    head = ["variant", "arch", "regs", "spills st/ld (B)", "smem (B)", "occ", "SASS/ns",
            "div/ns", "MUFU/ns", "B/ns", "issue/HBM", "est %BW"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        if "error" in r:
            cells = [r["variant"], f"sm_{r['arch']}", "error: " + r["error"].splitlines()[0][:80]]
            cells += [""] * (len(head) - len(cells))
        else:
            cells = [r["variant"], f"sm_{r['arch']}", str(r["regs"]),
                     f"{r['spill_stores']}/{r['spill_loads']}", str(r["shared"]),
                     f"{100 * r['occupancy']:.0f}%", f"{r['sass_per_ns']:g}",
                     f"{r['div_per_ns']:g}", f"{r['mufu_per_ns']:g}", f"{r['bytes_per_ns']:g}",
                     f"{r['issue_vs_hbm']:.2f}", f"{r['est_bw_pct']:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budgets_apply() -> bool:
    """The budgets are for Triton >= 3.6 (3.6 and 3.9 measured; both divide with libdevice's
    approximate division, ``kernels/device_math.py``)."""
    major, minor = (int(v) for v in triton.__version__.split(".")[:2])
    return (major, minor) >= (3, 6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", choices=sorted(CARDS),
                        help="compute capability (repeatable; default 90 and 80)")  # fmt: skip
    parser.add_argument("--set", choices=("all", "ci"), default="all", help="variants")
    parser.add_argument("--only", help="the variants whose name contains this")
    parser.add_argument("--src", type=Path, default=sc.REPO / "kernels", help="kernels/ dir")
    parser.add_argument("--check", action="store_true", help="exit 1 on errors, sm_90 "
                        "spills or loops over budget")  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows here")
    opts = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # the kernels must be real JIT functions
    kernels = sc.load_kernels(opts.src.resolve())
    chosen = [v for v in VARIANTS if opts.set == "all" or v.name in CI_SET]
    chosen = [v for v in chosen if not opts.only or opts.only in v.name]
    rows = []
    for arch in opts.arch or [90, 80]:
        for cfg in chosen:
            try:
                rows.append(row(kernels, cfg, arch))
            except Exception as e:  # report and go on with the other variants
                rows.append(dict(variant=cfg.name, arch=arch, kind=budget_kind(cfg),
                                 error=f"{type(e).__name__}: {e}"))  # fmt: skip
    applies = budgets_apply()
    print(f"triton {triton.__version__}, BLOCK={sc.BLOCK}, num_warps={sc.NUM_WARPS}, "
          f"enable_fp_fusion={sc.FP_FUSION}; cards: "
          + "; ".join(f"sm_{a} {c['card']}" for a, c in CARDS.items()) + "\n")  # fmt: skip
    print(markdown(rows))
    if opts.json:
        meta = dict(triton=triton.__version__, block=sc.BLOCK, num_warps=sc.NUM_WARPS,
                    budgets=BUDGETS, budgets_apply=applies)  # fmt: skip
        opts.json.write_text(json.dumps(dict(meta, rows=rows), indent=2) + "\n")
    failed = [p for r in rows for p in problems(r, applies)]
    if opts.check and not applies:
        print(f"\nbudgets not checked: they are for Triton >= 3.6 (this is {triton.__version__})")
    for p in failed:
        print("FAIL " + p, file=sys.stderr)
    return 1 if opts.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
