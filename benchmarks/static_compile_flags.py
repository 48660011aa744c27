"""Static compile (``static_compile.py``'s machinery, no GPU) of the scan kernels with the
issue-13 flags on: the synaptic current (HAS_SYN, the tau_syn gradient's READ_I) and the
per-sample lengths (HAS_LEN), AdExIF fp32, sm_90 and sm_80.

Usage: ``python benchmarks/static_compile_flags.py`` (prints a markdown table). Each row
adds the flag's arguments (a third state row, the 11-row packed parameters, the lengths
tensor) to the launch arguments ``static_compile.launch_args`` builds for the default
configuration.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import static_compile as sc

ROOT = Path(__file__).resolve().parents[1]
E = sc._empty
M, N, T = sc.M, sc.N, sc.T
# name, kernel, HAS_SYN, HAS_LEN, READ_I (and STORE_I), PARAM_GRAD, PARAM_MASK
CONFIGS = (
    ("fwd fp32 HAS_SYN", "fwd", True, False, False, False, 1023),
    ("fwd fp32 HAS_LEN", "fwd", False, True, False, False, 1023),
    ("fwd fp32 HAS_SYN+HAS_LEN", "fwd", True, True, False, False, 1023),
    ("bwd fp32 HAS_SYN", "bwd", True, False, False, False, 1023),
    ("bwd fp32 HAS_LEN", "bwd", False, True, False, False, 1023),
    ("bwd fp32 PARAM_GRAD tau,tau_syn (READ_I)", "bwd", True, False, True, True, 1026),
)


def flag_args(base, kind: str, syn: bool, length: bool, read_i: bool):
    """``static_compile.launch_args`` with the flags' arguments added."""

    def launch_args(kernel, cfg):
        args, kw = base(kernel, cfg)
        C = 2 + syn  # V, w (, I)
        kw["state0_ptr"] = E(C, M)
        kw["par_ptr"] = E(11, N)
        if kind == "fwd":
            kw["state_ptr"] = E(C, M)
            kw.update(HAS_SYN=syn, STORE_I=read_i, isq_ptr=E(T, M) if read_i else None)
        else:
            kw["gstate0_ptr"] = E(C, M)
            kw.update(HAS_SYN=syn, READ_I=read_i)
            if read_i:  # the tau_syn gradient reads the stored I and x
                kw.update(isq_ptr=E(T, M), x_ptr=E(T, M, dtype=cfg.x_dtype), gpar_ptr=E(11, M))
        if length:
            kw.update(len_ptr=torch.empty(sc.B, dtype=torch.int32), SPS=N, HAS_LEN=True)
        return args, kw

    return launch_args


def main() -> None:
    fwd, bwd = sc.load_kernels(ROOT / "kernels")
    base = sc.launch_args
    rows = []
    for name, kind, syn, length, read_i, param_grad, mask in CONFIGS:
        sc.launch_args = flag_args(base, kind, syn, length, read_i)
        cfg = sc.Config(name, kind, torch.float32, param_grad, mask)
        for cap in (90, 80):
            row = sc.inspect_config(fwd if kind == "fwd" else bwd, cfg, cap)
            row["config"] = f"sm_{cap} {name}"
            rows.append(row)
        sc.launch_args = base
    print(sc.markdown(rows, False))


if __name__ == "__main__":
    main()
