"""Compile the fused recurrent kernels (``kernels/recurrent_fwd.py``, ``recurrent_bwd.py``)
for an NVIDIA target without a GPU and report their code, as ``static_compile.py`` does for
the feed-forward scans (same compiler path, ptxas report and time-loop detection).

Usage::

    python benchmarks/static_compile_recurrent.py              # sm_90, N = 64, 128, 256
    python benchmarks/static_compile_recurrent.py --arch 80 --n 256

Each configuration is AdExIF with the models' defaults (soft reset, ReluGrad), fp32 input,
the launch settings of ``adex.kernels.recurrent_fwd.recurrent_config`` on a GPU (16 samples
per program, ``BLOCK_N = next_pow2(N)``, its num_warps), the forward storing V (a gradient
is needed) and the backward with the gradient of the spikes, of the initial state and of
the carried spikes (no parameter gradients, then with all ten).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from static_compile import (
    CEILING,
    DT,
    MODEL,
    REPO,
    SG,
    SURROGATE,
    _empty,
    inspect_launch,
    load_kernels,
    markdown,
)

T, B = 8, 64  # steps, batch (4 programs of 16 samples)


def _launch(n: int) -> tuple[int, int, int]:
    from adex.kernels.recurrent_fwd import recurrent_config

    block_b, block_n, num_warps, _ = recurrent_config(B, n, torch.device("cuda"))
    return block_b, block_n, num_warps


def fwd_args(n: int) -> dict:
    """``recurrent_scan_fwd``'s launch with plan = spec.plan(needs_grad=True, False)."""
    from adex.kernels.recurrent_fwd import BLOCK_K

    block_b, block_n, num_warps = _launch(n)
    x = _empty(T, B, n)
    return dict(
        x_ptr=x, state0_ptr=_empty(2, B, n), sbuf_ptr=_empty(B, n), weight_ptr=_empty(n, n),
        par_ptr=_empty(10, n), spk_ptr=torch.empty_like(x), state_ptr=_empty(2, B, n),
        vseq_ptr=_empty(T, B, n), wseq_ptr=None, ref_ptr=None, T=T, B=B, N=n, dt=DT,
        ceiling=CEILING, k0=0, tau_ref=0.0, **MODEL, STORE_V=True, STORE_W=False,
        STORE_REF=False, BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_K=min(block_n, BLOCK_K),
        num_warps=num_warps,
    )  # fmt: skip


def bwd_args(n: int, param_grad: bool) -> dict:
    """``recurrent_scan_bwd``'s launch: grad of the spikes, of state0 and of s0."""
    from adex.kernels.recurrent_fwd import BLOCK_K

    block_b, block_n, num_warps = _launch(n)
    return dict(
        vseq_ptr=_empty(T, B, n), state0_ptr=_empty(2, B, n), weight_ptr=_empty(n, n),
        par_ptr=_empty(10, n), gspk_ptr=_empty(T, B, n), gstate_ptr=None, gvseq_ptr=None,
        gwseq_ptr=None, ref_ptr=None,
        wseq_ptr=_empty(T, B, n) if param_grad else None,
        gpar_ptr=_empty(10, B, n) if param_grad else None, gcur_ptr=_empty(T, B, n),
        gstate0_ptr=_empty(2, B, n), gs0_ptr=_empty(B, n), T=T, B=B, N=n, dt=DT,
        ceiling=CEILING, tau_ref=0.0, sg0=SG[0], sg1=SG[1], sg2=SG[2], sg3=SG[3],
        SURROGATE=SURROGATE, **MODEL, DETACH_RESET=False, PARAM_GRAD=param_grad,
        PARAM_MASK=(1 << 10) - 1, READ_W=param_grad, RECOMPUTE=False, HAS_GSPK=True,
        HAS_GSTATE=False, HAS_GVSEQ=False, HAS_GWSEQ=False, WRITE_GSTATE0=True, WRITE_GS0=True,
        BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_K=min(block_n, BLOCK_K), num_warps=num_warps,
    )  # fmt: skip


def with_synapse(kwargs: dict, fwd: bool) -> dict:
    """A launch with the synapse on (state row I, packed row 10), its sequences not stored
    (tau_syn not learnable)."""
    n, c = kwargs["N"], 3
    out = dict(kwargs, HAS_SYN=True, state0_ptr=_empty(c, B, n), par_ptr=_empty(11, n))
    if fwd:
        out["state_ptr"] = _empty(c, B, n)
    else:
        out["gstate0_ptr"] = _empty(c, B, n)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability (90, 80)")
    parser.add_argument("--n", type=int, action="append", help="neurons (repeatable)")
    parser.add_argument("--syn", action="store_true", help="also the kernels with a synapse")
    opts = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # the kernels must be real JIT functions
    load_kernels(REPO / "kernels")  # adex.kernels from this checkout
    fwd = importlib.import_module("adex.kernels.recurrent_fwd")._recurrent_fwd_kernel
    bwd = importlib.import_module("adex.kernels.recurrent_bwd")._recurrent_bwd_kernel
    rows = []
    for n in opts.n or (64, 128, 256):
        block_b, block_n, num_warps = _launch(n)
        tag = f"N={n} [{block_b}x{block_n}, {num_warps} warps]"
        launches = [(fwd, f"rec fwd fp32 {tag}", fwd_args(n)),
                    (bwd, f"rec bwd fp32 {tag}", bwd_args(n, False)),
                    (bwd, f"rec bwd fp32 PARAM_GRAD {tag}", bwd_args(n, True))]  # fmt: skip
        if opts.syn:
            launches += [(fwd, f"rec fwd fp32 HAS_SYN {tag}", with_synapse(fwd_args(n), True)),
                         (bwd, f"rec bwd fp32 HAS_SYN {tag}",
                          with_synapse(bwd_args(n, False), False))]  # fmt: skip
        for kernel, name, kwargs in launches:
            try:
                row = inspect_launch(kernel, name, (), kwargs, opts.arch)
            except Exception as e:  # report and go on with the other configurations
                row = dict(config=name, error=f"{type(e).__name__}: {e}")
            rows.append(row)
    print(markdown(rows, labelled=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
