"""Compile the fused AdExIF scan kernels for an NVIDIA target without a GPU; report their code.

Usage::

    python benchmarks/static_compile.py                      # sm_90, this checkout's kernels/
    python benchmarks/static_compile.py --arch 80            # sm_80
    python benchmarks/static_compile.py --src before=/work/wt-before/kernels --src after=kernels
    python benchmarks/static_compile.py --json static.json

For each kernel configuration (``CONFIGS``) the script prints registers per thread, spill
stores/loads (bytes), the total SASS instruction count, the SASS instruction count of the
per-step time loop body and the MUFU instructions in that loop (Triton lowers an fp32
``/`` to ``div.full.f32``, one ``MUFU.RCP`` each; ``FCHK`` or a ``CALL`` to a subroutine
would mark an IEEE division with a slow path; ``MUFU.EX2``/``LG2`` are exp/log). With
BLOCK = 256 and 4 warps every thread carries 2 neurons: per-neuron counts are half the
per-thread ones (8 ``MUFU.RCP`` per loop iteration = 4 divisions per neuron-step).

How a kernel is compiled without a GPU:
    The kernels are the real ``@triton.jit`` functions of a ``kernels/`` directory (loaded as
    the package ``adex.kernels``; ``TRITON_INTERPRET`` is ignored). Each configuration builds
    the arguments its launcher (``adex_scan_fwd`` / ``adex_scan_bwd`` of that checkout) would
    pass, as small CPU tensors, ints and floats, with ``BLOCK = 256`` and ``num_warps = 4`` as
    on a GPU (``kernels/launch.py``: ``GPU_BLOCK``, ``GPU_STAGES = None``). They go through
    the kernel's own binder (Triton's launch-time specialization: pointer dtypes, 16-byte
    alignment of pointers and of ints divisible by 16, None as a constexpr), which gives the
    signature, constexprs and attributes of a real launch; the launch itself is skipped and
    ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` compiles instead.
    M and N are multiples of 16 (as in the target workloads), so M/N and all pointers carry
    the divisibility-16 attribute. Both kernel generations are handled: the one with
    placeholder pointers, separate V0/w0 and ``CKPT_ROWS`` (before the state-block refactor)
    and the one with a ``[C, M]`` state block and None for absent tensors; which one a
    directory holds is read from the kernel's argument names.

Registers and spills:
    ``n_regs``/``n_spills`` of a compiled kernel come from the CUDA driver, which is absent
    here; instead the ``-v`` report of the ptxas run that built the cubin is read: Triton
    prints it with ``knobs.nvidia.dump_ptxas_log`` (and compiles afresh with
    ``knobs.compilation.always_compile``: a cached cubin brings no report). So the flags are
    those of the Triton in use (3.9 adds ``--regAllocOptLevel=2``, 3.6 does not). The
    report has a "Function properties for NAME" block per function ("A bytes stack frame,
    B bytes spill stores, C bytes spill loads") and "Used N registers" per entry function;
    registers are the kernel's entry's, spills the sum over all its functions (a
    subroutine's spills are the kernel's too).

How the time-loop body is identified in the SASS:
    ``cuobjdump -sass`` of the cubin lists every instruction with its byte offset, and branch
    instructions (``BRA``, ``BRA.U``, predicated or not) with their absolute target offset.
    A branch whose target lies before it (a backward branch; the ``BRA`` to itself that ends
    the code is excluded) closes a loop whose body is the instruction range [target,
    branch]; backward branches to the same target are one loop (the latest one closes it).
    The per-step loop over T is the innermost loop: among the loops that contain no other
    loop, the one with the most instructions (the forward has exactly one loop; the backward
    without checkpointing has the segment loop around the per-step loop; a per-step
    division/exp slow path, if any, would be a subroutine outside the range and is not
    counted; on sm_80 ptxas leaves a loop by a predicated ``CALL.REL.NOINC`` to the
    instruction after its closing ``BRA``, which is counted as a loop instruction but not as
    a slow-path call). The count is of instructions in that range, NOPs excluded; the total
    count is of all instructions of the kernel, NOPs excluded.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import types
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.compiler import make_backend
from triton.runtime.jit import create_function_from_signature

REPO = Path(__file__).resolve().parents[1]
BLOCK = 256  # kernels/launch.py GPU_BLOCK
NUM_WARPS = 4  # max(1, min(8, GPU_BLOCK // 64))
NUM_STAGES = None  # kernels/launch.py GPU_STAGES (Config.stages)
FP_FUSION = True  # kernels/launch.py FP_FUSION: every launch pins enable_fp_fusion
T, B, N = 8, 4, 256  # steps, batch, neurons per sample (M = B * N, multiples of 16)
M = B * N
# AdExIF with the models' defaults: soft reset, ReluGrad(alpha=0.3, width=1.0) (kind 0)
MODEL = dict(HARD_RESET=False, HAS_W=True, HAS_EXP=True, HAS_REF=False)  # legacy kernels
SURROGATE, SG = 0, (0.3, 1.0, 0.0, 0.0)
DT, CEILING = 0.1, 10.0  # ms; adex.params.RUNAWAY_CEILING (runtime fp32: values immaterial)


MODELS = {
    "AdExIF": dict(HARD_RESET=False, HAS_W=True, HAS_EXP=True, HAS_REF=False),
    "AdExIFRef": dict(HARD_RESET=False, HAS_W=True, HAS_EXP=True, HAS_REF=True),
    "ExpIF": dict(HARD_RESET=False, HAS_W=False, HAS_EXP=True, HAS_REF=False),
    "ExpIFRef": dict(HARD_RESET=False, HAS_W=False, HAS_EXP=True, HAS_REF=True),
    "LIF": dict(HARD_RESET=False, HAS_W=False, HAS_EXP=False, HAS_REF=False),
}
"""The kernels' model flags of each module (soft reset, the modules' default)."""
ALL_ROWS = (1 << 10) - 1


@dataclass(frozen=True)
class Config:
    """One logical kernel configuration.

    Attributes:
        name: table label. kernel: 'fwd' or 'bwd'. x_dtype: input dtype (spikes, grad of
            spikes and grad of x share it). param_grad: backward with parameter gradients.
            param_mask: the packed rows whose gradients are written (bit k: row k; a layer
            asks for its learnable ones; kernels from before the mask existed always write
            all ten). model: a key of :data:`MODELS`. needs_grad: a training forward (the
            V sequence, or the checkpoints, are written); False: inference, spikes only.
            checkpoint: K > 0: checkpoint mode (forward writes checkpoints, backward
            recomputes K-step segments). spike_dtype: the forward's spike dtype (None: x's;
            uint8 only without grad). stages: ``num_stages`` of the time loops
            (``kernels/launch.py`` GPU_STAGES; None: unannotated). gspk_row: the backward's
            spike gradient is one row for every step (``GSPK_ROW``: a sum, mean or rate
            readout). check: the forward's own finiteness check of x (``check_finite=True``,
            a module's default). Models other than AdExIF, no-grad, checkpoint, uint8 spikes,
            stages, gspk_row and check need today's kernel generation.
    """

    name: str
    kernel: str
    x_dtype: torch.dtype
    param_grad: bool = False
    param_mask: int = ALL_ROWS
    model: str = "AdExIF"
    needs_grad: bool = True
    checkpoint: int = 0
    spike_dtype: torch.dtype | None = None
    stages: int | None = None
    gspk_row: bool = False
    check: bool = False


CONFIGS = (
    Config("fwd fp32 (STORE_V)", "fwd", torch.float32),
    Config("bwd fp32 (grad spikes)", "bwd", torch.float32),
    Config("bwd fp32 PARAM_GRAD", "bwd", torch.float32, param_grad=True),
    # learnable tau (row 1) and b (row 9), as adex.AdExIF(..., learnable=("tau", "b"))
    Config("bwd fp32 PARAM_GRAD tau,b", "bwd", torch.float32, True, (1 << 1) | (1 << 9)),
    Config("fwd bf16 (STORE_V)", "fwd", torch.bfloat16),
    Config("bwd bf16 (grad spikes)", "bwd", torch.bfloat16),
)
"""The default table: AdExIF, the configurations both kernel generations have."""


# -- the kernels of one checkout ---------------------------------------------------------------


def load_kernels(src: Path) -> tuple[Any, Any]:
    """``(_adex_scan_fwd_kernel, _adex_scan_bwd_kernel)`` of the ``kernels/`` directory
    ``src``, imported as ``adex.kernels`` (the kernels import their helpers from there)."""
    for name in [m for m in sys.modules if m == "adex" or m.startswith("adex.")]:
        del sys.modules[name]
    root = types.ModuleType("adex")
    root.__path__ = []  # a bare namespace: only adex.kernels is needed
    sys.modules["adex"] = root
    spec = importlib.util.spec_from_file_location(
        "adex.kernels", src / "__init__.py", submodule_search_locations=[str(src)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules["adex.kernels"] = package
    spec.loader.exec_module(package)
    fwd = importlib.import_module("adex.kernels.scan_fwd")._adex_scan_fwd_kernel
    bwd = importlib.import_module("adex.kernels.scan_bwd")._adex_scan_bwd_kernel
    for k in (fwd, bwd):
        if not isinstance(k, triton.runtime.JITFunction):
            raise RuntimeError(f"{k!r} is not a JITFunction (TRITON_INTERPRET set at import?)")
    return fwd, bwd


def _empty(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


def launch_args(kernel: Any, cfg: Config) -> tuple[tuple, dict]:
    """The positional and keyword arguments the checkout's launcher passes for ``cfg``."""
    legacy = "CKPT_ROWS" in kernel.arg_names  # placeholder pointers, separate V0/w0
    build = {
        ("fwd", True): _fwd_args_legacy,
        ("fwd", False): _fwd_args,
        ("bwd", True): _bwd_args_legacy,
        ("bwd", False): _bwd_args,
    }[cfg.kernel, legacy]
    args, kwargs = build(cfg)
    if "PARAM_MASK" in kernel.arg_names:  # kernels with the parameter-row mask
        kwargs["PARAM_MASK"] = cfg.param_mask
        # the stored w is read for the tau_w gradient only (packed row 2)
        read_w = cfg.param_grad and bool(cfg.param_mask & (1 << 2))
        kwargs["READ_W"] = read_w = read_w and MODELS[cfg.model]["HAS_W"]
        kwargs["wseq_ptr"] = kwargs["wseq_ptr"] if read_w else None
    if cfg.check:  # the forward's finiteness check of every x it reads
        kwargs.update(flag_ptr=_empty(1, dtype=torch.int32), CHECK_X=True)
    if cfg.gspk_row:  # one [M] row of spike gradient for every step
        kwargs.update(gspk_ptr=_empty(1, M, dtype=cfg.x_dtype), GSPK_ROW=True)
    kwargs.update(NUM_STAGES=cfg.stages, BLOCK=BLOCK, num_warps=NUM_WARPS)
    kwargs.update(enable_fp_fusion=FP_FUSION)
    return args, kwargs


def _fwd_args(cfg: Config) -> tuple[tuple, dict]:
    # kernels/scan_fwd.py adex_scan_fwd with plan = spec.plan(cfg.needs_grad, cfg.param_grad)
    flags = MODELS[cfg.model]
    C = 1 + flags["HAS_W"] + flags["HAS_REF"]
    K = cfg.checkpoint if cfg.needs_grad else 0
    store_w = flags["HAS_W"] and cfg.param_grad and bool(cfg.param_mask & (1 << 2)) and not K
    store_ref = flags["HAS_REF"] and cfg.needs_grad and not K
    x = _empty(T, M, dtype=cfg.x_dtype)
    kwargs = dict(
        x_ptr=x, state0_ptr=_empty(C, M), par_ptr=_empty(10, N),
        spk_ptr=torch.empty_like(x, dtype=cfg.spike_dtype or cfg.x_dtype),
        state_ptr=_empty(C, M), vseq_ptr=_empty(T, M) if cfg.needs_grad and not K else None,
        wseq_ptr=_empty(T, M) if store_w else None,
        ref_ptr=_empty(-(-T // 8), M, dtype=torch.uint8) if store_ref else None,
        ckpt_ptr=_empty(-(-T // K), C, M) if K else None, T=T, M=M, N=N, dt=DT,
        ceiling=CEILING, k0=0, tau_ref=1.0 if flags["HAS_REF"] else 0.0, K=max(K, 1), **flags,
        STORE_V=cfg.needs_grad and not K, STORE_W=store_w, STORE_REF=store_ref,
        CHECKPOINT=K > 0,
    )  # fmt: skip
    return (), kwargs


def _fwd_args_legacy(cfg: Config) -> tuple[tuple, dict]:
    # 17373da kernels/scan_fwd.py adex_scan_fwd(store_v=True, store_w=False)
    x = _empty(T, M, dtype=cfg.x_dtype)
    v0, v_seq = _empty(M), _empty(T, M)
    args = (
        x, v0, _empty(M), _empty(10, N), torch.empty_like(x), v_seq, _empty(0), _empty(M),
        _empty(M), v0, _empty(0), _empty(0, dtype=torch.uint8), v_seq,
        T, M, N, DT, CEILING, 0, 0.0, 1,
    )  # fmt: skip
    kwargs = dict(**MODEL, STORE_V=True, STORE_W=False, CHECKPOINT=False, CKPT_ROWS=2)
    return args, kwargs


def _bwd_args(cfg: Config) -> tuple[tuple, dict]:
    # kernels/scan_bwd.py adex_scan_bwd: grad of spikes only, want_x and want_state0
    flags = MODELS[cfg.model]
    C = 1 + flags["HAS_W"] + flags["HAS_REF"]
    pg, K = cfg.param_grad, cfg.checkpoint
    rows = min(K, T) if K else T  # checkpoint mode: scratch rows of one segment
    kwargs = dict(
        vseq_ptr=_empty(rows, M), state0_ptr=_empty(C, M), par_ptr=_empty(10, N),
        gspk_ptr=_empty(T, M, dtype=cfg.x_dtype), gvseq_ptr=None, gwseq_ptr=None,
        gstate_ptr=None,
        ref_ptr=_empty(-(-rows // 8), M, dtype=torch.uint8) if flags["HAS_REF"] else None,
        wseq_ptr=_empty(rows, M) if pg else None,
        gpar_ptr=_empty(10, M) if pg else None, gx_ptr=_empty(T, M, dtype=cfg.x_dtype),
        gstate0_ptr=_empty(C, M), x_ptr=_empty(T, M, dtype=cfg.x_dtype) if K else None,
        ckpt_ptr=_empty(-(-T // K), C, M) if K else None,
        T=T, M=M, N=N, K=K or T, k0=0, dt=DT, ceiling=CEILING, sg0=SG[0], sg1=SG[1],
        sg2=SG[2], sg3=SG[3], tau_ref=1.0 if flags["HAS_REF"] else 0.0, SURROGATE=SURROGATE,
        **flags, DETACH_RESET=False, PARAM_GRAD=pg, RECOMPUTE=K > 0, HAS_GSPK=True,
        HAS_GVSEQ=False, HAS_GWSEQ=False, HAS_GSTATE=False, WRITE_GX=True,
        WRITE_GSTATE0=True,
    )  # fmt: skip
    return (), kwargs


def _bwd_args_legacy(cfg: Config) -> tuple[tuple, dict]:
    # 17373da kernels/scan_bwd.py adex_scan_bwd: grad of spikes only (w_seq, w0 with
    # param_grad); absent inputs get the v_seq placeholder
    pg = cfg.param_grad
    v_seq = _empty(T, M)
    dummy = v_seq
    args = (
        v_seq, _empty(M), _empty(10, N), _empty(T, M, dtype=cfg.x_dtype),
        dummy, dummy, dummy, dummy, dummy,
        _empty(T, M) if pg else dummy, _empty(M) if pg else dummy,
        _empty(10, M) if pg else _empty(0), _empty(T, M, dtype=cfg.x_dtype), _empty(M),
        _empty(M), dummy, v_seq,
        T, M, N, DT, CEILING, *SG, T, 0, 0.0,
    )  # fmt: skip
    kwargs = dict(
        SURROGATE=SURROGATE, **MODEL, DETACH_RESET=False, PARAM_GRAD=pg, HAS_GSPK=True,
        HAS_GVSEQ=False, HAS_GWSEQ=False, HAS_GVLAST=False, HAS_GWLAST=False,
        RECOMPUTE=False, CKPT_ROWS=2,
    )  # fmt: skip
    return args, kwargs


# -- compile and inspect ---------------------------------------------------------------------


def compile_kernel(kernel: Any, args: tuple, kwargs: dict, target: GPUTarget):
    """Specialize ``kernel`` on the arguments as a launch would, and compile for ``target``.
    Returns ``(compiled, signature, ptxas -v report)``."""
    backend = make_backend(target)
    kwargs = dict(kwargs, debug=kernel.debug or triton.knobs.runtime.debug)
    kwargs["instrumentation_mode"] = triton.knobs.compilation.instrumentation_mode
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(
        backend, kwargs, bound, specialization, options
    )
    src = ASTSource(kernel, signature, constexprs, attrs)
    saved = knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log
    knobs.compilation.always_compile = True  # a cached cubin would bring no ptxas report
    knobs.nvidia.dump_ptxas_log = True  # Triton prints ptxas -v's report
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=target, options=options.__dict__)
    finally:
        knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = saved
    return compiled, signature, log.getvalue()


_PROPERTIES = re.compile(
    r"Function properties for (\S+)\s*\n\s*(\d+) bytes stack frame, (\d+) bytes spill "
    r"stores, (\d+) bytes spill loads"
)
_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_REGS = re.compile(r"Used (\d+) registers")


def ptxas_usage(log: str, entry: str) -> dict:
    """Registers of the entry function ``entry`` and the spill bytes and stack frame of all
    its functions (summed) from a ``ptxas -v`` report (see the module docstring)."""
    props = {m.group(1): tuple(map(int, m.groups()[1:])) for m in _PROPERTIES.finditer(log)}
    entries = [m for m in _ENTRY.finditer(log) if m.group(1) == entry]
    if not entries or entry not in props:
        raise RuntimeError(f"no ptxas -v report for {entry!r} in:\n{log[-2000:]}")
    regs = _REGS.search(log, entries[-1].end())
    return dict(
        regs=int(regs.group(1)),
        spill_stores=sum(p[1] for p in props.values()),
        spill_loads=sum(p[2] for p in props.values()),
        stack=props[entry][0],
    )


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRANCH = re.compile(r"^(?:@!?U?P\w+\s+)?BRA(?:\.\w+)*\s+(?:`\()?(0x[0-9a-f]+)")


def sass_instructions(cubin: bytes) -> list[tuple[int, str]]:
    """``(offset, instruction text)`` of every SASS instruction of the cubin's one kernel."""
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "-sass", f.name], check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
    return [(int(m.group(1), 16), m.group(2)) for m in map(_SASS_LINE.search, out.splitlines())
            if m]  # fmt: skip


def _opcode(text: str) -> str:
    words = text.split()
    return words[1] if words[0].startswith("@") else words[0]


def innermost_loops(instrs: list[tuple[int, str]]) -> tuple[list[tuple[int, int]], int]:
    """``(spans, loops)``: the ``(first, last)`` offsets of every loop that contains no other
    loop (see the module docstring), and the number of loops found."""
    loops: dict[int, int] = {}  # target offset -> offset of the latest branch back to it
    for off, text in instrs:
        m = _BRANCH.match(text)
        if m and int(m.group(1), 16) < off:
            target = int(m.group(1), 16)
            loops[target] = max(loops.get(target, off), off)
    spans = list(loops.items())
    innermost = [(a, b) for a, b in spans
                 if not any((c, d) != (a, b) and a <= c and d <= b for c, d in spans)]  # fmt: skip
    return innermost, len(spans)


def time_loop(instrs: list[tuple[int, str]]) -> tuple[int, int, int]:
    """``(first, last, loops)``: the offsets of the first and last instruction (the closing
    branch) of the innermost loop with the most instructions (the per-step loop), and the
    number of loops found; ``(0, -1, 0)`` without a loop."""
    innermost, n_loops = innermost_loops(instrs)
    if not innermost:
        return 0, -1, 0
    first, last = max(innermost, key=lambda ab: sum(ab[0] <= o <= ab[1] for o, _ in instrs))
    return first, last, n_loops


def _calls_out(body: list[tuple[int, str]], after: int | None) -> int:
    """CALLs in the loop to a subroutine (a slow path): not the ``@!P CALL.REL.NOINC`` to the
    instruction after the loop by which ptxas (sm_80) leaves a loop."""
    n = 0
    for _, text in body:
        m = re.search(r"\bCALL\S*\s+(0x[0-9a-f]+)", text)
        n += bool(m) and int(m.group(1), 16) != after
    return n


def inspect_config(kernel: Any, cfg: Config, capability: int) -> dict:
    args, kwargs = launch_args(kernel, cfg)
    return inspect_launch(kernel, cfg.name, args, kwargs, capability)


def inspect_launch(kernel: Any, name: str, args: tuple, kwargs: dict, capability: int) -> dict:
    """Compile ``kernel`` for the launch ``(args, kwargs)`` and report its code (one table
    row named ``name``)."""
    target = GPUTarget("cuda", capability, 32)
    compiled, signature, log = compile_kernel(kernel, args, kwargs, target)
    usage = ptxas_usage(log, compiled.metadata.name)
    instrs = sass_instructions(compiled.asm["cubin"])
    first, last, n_loops = time_loop(instrs)
    body = [(o, t) for o, t in instrs if first <= o <= last and _opcode(t) != "NOP"]
    after = next((o for o, _ in instrs if o > last), None) if n_loops else None
    ops = Counter(_opcode(t) for _, t in body)
    mufu = Counter(t.split("MUFU.")[1].split()[0] for _, t in body if "MUFU." in t)
    return dict(
        config=name,
        kernel=kernel.__name__,
        **usage,
        shared=compiled.metadata.shared,
        sass_total=sum(_opcode(t) != "NOP" for _, t in instrs),
        loops=n_loops,
        loop_sass=len(body),
        loop_mufu={k: mufu[k] for k in sorted(mufu)},
        loop_rcp=mufu.get("RCP", 0),
        loop_fchk=ops.get("FCHK", 0),
        loop_calls=_calls_out(body, after),
        loop_ldg=sum(v for k, v in ops.items() if k.startswith("LDG")),
        loop_stg=sum(v for k, v in ops.items() if k.startswith("STG")),
        **_all_inner_loops(instrs),
        signature={k: v for k, v in signature.items() if v != "constexpr"},
    )


def _all_inner_loops(instrs: list[tuple[int, str]]) -> dict:
    """Every innermost loop (``inner``: its SASS count, global loads and MUFU counts, largest
    first): ptxas may unroll a short loop body (then a remainder loop follows it), and in
    checkpoint mode the backward has a recompute loop besides the adjoint loop."""
    spans, _ = innermost_loops(instrs)
    loops = []
    for a, b in spans:
        body = [t for o, t in instrs if a <= o <= b and _opcode(t) != "NOP"]
        mufu = Counter(t.split("MUFU.")[1].split()[0] for t in body if "MUFU." in t)
        # global loads: LDG, and LDGSTS (cp.async) in a pipelined loop; not LDGDEPBAR
        ldg = sum(re.match(r"LDG(STS)?(\.|$)", _opcode(t)) is not None for t in body)
        loops.append(dict(sass=len(body), ldg=ldg, mufu={k: mufu[k] for k in sorted(mufu)}))
    return dict(inner=sorted(loops, key=lambda r: -r["sass"]))


# -- report ------------------------------------------------------------------------------------


def markdown(rows: list[dict], labelled: bool) -> str:
    head = ["config", "regs", "spill st/ld (B)", "SASS total", "loop SASS", "loop MUFU.RCP",
            "loop MUFU (all)", "loop FCHK/CALL", "loop LDG/STG"]  # fmt: skip
    if labelled:
        head = ["src", *head]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        if "error" in r:
            cells = [r["config"], "error: " + r["error"].splitlines()[0][:80]]
            cells += [""] * (len(head) - len(cells) - labelled)
        else:
            mufu = ", ".join(f"{k} {v}" for k, v in r["loop_mufu"].items()) or "-"
            cells = [r["config"], str(r["regs"]), f"{r['spill_stores']}/{r['spill_loads']}",
                     str(r["sass_total"]), str(r["loop_sass"]), str(r["loop_rcp"]), mufu,
                     f"{r['loop_fchk']}/{r['loop_calls']}",
                     f"{r['loop_ldg']}/{r['loop_stg']}"]  # fmt: skip
        if labelled:
            cells = [r["src"], *cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parse_src(value: str) -> tuple[str, Path]:
    label, sep, path = value.partition("=")
    if not sep:
        label, path = value, value
    return label, Path(path).resolve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability (90, 80)")
    parser.add_argument(
        "--src",
        action="append",
        type=_parse_src,
        metavar="[LABEL=]PATH",
        help="a kernels/ directory (repeatable; default: this checkout's)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows here")
    parser.add_argument("--only", help="run the configurations whose name contains this")
    opts = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # the kernels must be real JIT functions
    sources = opts.src or [("kernels", REPO / "kernels")]
    rows = []
    for label, src in sources:
        fwd, bwd = load_kernels(src)
        for cfg in CONFIGS:
            if opts.only and opts.only not in cfg.name:
                continue
            kernel = fwd if cfg.kernel == "fwd" else bwd
            try:
                row = inspect_config(kernel, cfg, opts.arch)
            except Exception as e:  # report and go on with the other configurations
                row = dict(config=cfg.name, error=f"{type(e).__name__}: {e}")
            rows.append(dict(src=label, path=str(src), **row))
    fusion = triton.knobs.language.default_fp_fusion
    per_thread = BLOCK // (32 * NUM_WARPS)
    print(
        f"triton {triton.__version__}, sm_{opts.arch}, BLOCK={BLOCK}, num_warps={NUM_WARPS} "
        f"({per_thread} neurons/thread), NUM_STAGES={NUM_STAGES}, fp fusion {fusion}\n"
    )
    print(markdown(rows, labelled=len(sources) > 1))
    if opts.json:
        meta = dict(triton=triton.__version__, arch=opts.arch, block=BLOCK, num_warps=NUM_WARPS)
        opts.json.write_text(json.dumps(dict(meta, rows=rows), indent=2, default=str) + "\n")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
