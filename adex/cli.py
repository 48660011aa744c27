"""The ``adex`` command line (also ``python -m adex``).

Subcommands:

* ``adex patterns``: simulate the eight firing patterns of Naud et al. (2008)
  (:mod:`adex.presets`, :mod:`adex.patterns`), write one PNG of their voltage traces and
  print a table of spike count, first-spike latency and adaptation index per pattern.
* ``adex demo``: the training demo (:mod:`adex.demo`) with its options.
* ``adex bench``: the roofline benchmark (``benchmarks/roofline.py`` of a source checkout);
  needs a CUDA GPU.

Every error is reported as one line on stderr (``adex: error: ...``) with a non-zero exit
status: 2 for a usage error (and for ``bench`` without a GPU), 1 for a failure while running.
"""

from __future__ import annotations

import argparse
import math
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import torch

import adex
from adex.functional import resolve_backend
from adex.patterns import format_table, plot_patterns, simulate_patterns
from adex.presets import naud2008, naud2008_table1

PROG = "adex"


class CLIError(Exception):
    """A one-line error for the user; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`CLIError` (one line) instead of printing usage + exiting."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{self.prog}: error: {message} (see '{self.prog} --help')")


# -- patterns ---------------------------------------------------------------------------------


def _cmd_patterns(args: argparse.Namespace) -> int:
    if not (math.isfinite(args.duration) and args.duration > 0):
        raise CLIError(f"adex patterns: error: --duration must be > 0 ms, got {args.duration:g}")
    if not (math.isfinite(args.dt) and args.dt > 0):
        raise CLIError(f"adex patterns: error: --dt must be > 0 ms, got {args.dt:g}")
    device = _pick_device(args.device, "adex patterns")
    try:
        backend = resolve_backend(args.backend, torch.empty(0, device=device))
    except (RuntimeError, TypeError) as err:
        raise CLIError(f"adex patterns: error: {err}") from err
    table = naud2008_table1 if args.table1 else naud2008
    patterns = list(table.values())
    if round(args.duration / args.dt) < 1:
        raise CLIError(
            f"adex patterns: error: --duration {args.duration:g} ms is shorter than one step "
            f"of {args.dt:g} ms"
        )
    t, V, stats = simulate_patterns(
        patterns, args.duration, args.dt, device, backend, progress=True
    )
    out = Path(args.out)
    try:
        plot_patterns(t, V, patterns, stats, out)
    except ImportError as err:
        raise CLIError(f"adex patterns: error: {err}", code=1) from err
    except OSError as err:
        reason = err.strerror or err
        raise CLIError(f"adex patterns: error: cannot write {out}: {reason}", 1) from err
    rows = (
        "Table 1 as printed"
        if args.table1
        else "delayed regular bursting and transient with Brian2's adapted values"
    )
    print(
        f"Naud et al. (2008) firing patterns: {args.duration:g} ms at dt = {args.dt:g} ms, "
        f"hard reset, V_th = 0 mV, device {device}, backend {backend}; {rows}"
    )
    print(format_table(stats))
    print(f"wrote {out}")
    return 0


# -- demo -------------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from adex import demo

    for name in ("epochs", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CLIError(f"adex demo: error: --{name} must be >= 1, got {value}")
    argv: list[str] = []
    if args.task == "sequence" and args.plot is not None:
        raise CLIError("adex demo: error: --plot is an option of the digits task only")
    for name in ("task", "epochs", "steps", "seed", "device", "plot"):
        value = getattr(args, name)
        if value is not None:  # unset: the demo's own default
            argv += [f"--{name}", str(value)]
    if args.device is not None:
        _pick_device(args.device, "adex demo")  # a clear error for an unavailable device
    return demo.main(argv)


# -- bench ------------------------------------------------------------------------------------


def roofline_path() -> Path:
    """``benchmarks/roofline.py`` next to the package (a source checkout / editable install)."""
    return Path(adex.__file__).resolve().parent.parent / "benchmarks" / "roofline.py"


def _cmd_bench(args: argparse.Namespace, extra: Sequence[str]) -> int:
    if not torch.cuda.is_available():
        raise CLIError(
            "adex bench: error: needs a CUDA GPU (torch.cuda.is_available() is False); for a CPU "
            "smoke run use: TRITON_INTERPRET=1 python benchmarks/roofline.py --interpret-smoke",
            code=2,
        )
    path = roofline_path()
    if not path.is_file():
        raise CLIError(
            f"adex bench: error: {path} not found: the benchmark ships with a source "
            "checkout of adex (pip install -e .)",
            code=1,
        )
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(path), *extra]
    sys.path[:0] = [str(path.parent.parent), str(path.parent)]  # `benchmarks.` or plain import
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return 0


# -- common -----------------------------------------------------------------------------------


def _pick_device(name: str, prog: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise CLIError(f"{prog}: error: unknown device {name!r} ({err})") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"{prog}: error: device {name!r} requested but CUDA is not available")
    return device


def build_parser() -> argparse.ArgumentParser:
    """The ``adex`` argument parser with its subcommands."""
    parser = _Parser(
        prog=PROG,
        description="adex: AdExIF spiking neurons for PyTorch (BrainPy semantics, fused "
        "Triton kernels). Run 'adex COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"adex {adex.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "patterns",
        help="simulate the 8 Naud et al. (2008) firing patterns, plot them, print a table",
        description="Simulate the eight firing patterns of Naud et al. (2008) (adex.presets."
        "naud2008) as one AdExIF layer with hard reset and V_th at the 0 mV peak, from rest "
        "under a step current switched on at t = 0. Writes one PNG of the voltage traces and "
        "prints per pattern: spike count, first-spike latency (ms) and the adaptation index "
        "(mean of (ISI[k+1]-ISI[k])/(ISI[k+1]+ISI[k])).",
    )
    p.add_argument(
        "--out", default="adex_patterns.png", help="PNG file to write (default adex_patterns.png)"
    )
    p.add_argument(
        "--duration", type=float, default=500.0, help="simulated time in ms (default 500)"
    )
    p.add_argument("--dt", type=float, default=0.1, help="time step in ms (default 0.1)")
    p.add_argument(
        "--device",
        default="auto",
        help="'auto' (CUDA if available, else CPU; default), 'cpu', 'cuda'",
    )
    p.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "reference", "triton", "cpu"),
        help="'auto': fused Triton kernels on CUDA, the fused CPU kernels on CPU (default auto)",
    )
    p.add_argument(
        "--table1",
        action="store_true",
        help="use Table 1 exactly as printed (its delayed regular bursting and "
        "transient rows do not show those patterns)",
    )

    d = sub.add_parser(
        "demo",
        help="train the demo spiking network (python -m adex.demo)",
        description="Train Linear -> AdExIF -> Linear -> AdExIF with surrogate-gradient BPTT "
        "on scikit-learn's 8x8 digits held as input currents (adex.demo), and save a spike "
        "raster and voltage plot. Options left out take the demo's defaults.",
    )
    d.add_argument(
        "--task",
        choices=("digits", "sequence"),
        help="'digits' (default): the 8x8 digits; 'sequence': variable-length Japanese Vowels "
        "with AdLIF(tau_syn), an LI readout and lengths= (adex.demo_sequence; needs the "
        "sequence extra)",
    )
    d.add_argument("--epochs", type=int, help="training epochs (demo default 4, sequence 30)")
    d.add_argument("--steps", type=int, help="optimizer steps per epoch (demo default: one pass)")
    d.add_argument("--plot", help="where to save the plot (demo default adex_demo.png)")
    d.add_argument("--seed", type=int, help="random seed (demo default 0)")
    d.add_argument("--device", help="'auto' (default), 'cpu', 'cuda'")

    sub.add_parser(
        "bench",
        help="roofline benchmark of the fused kernels (needs a CUDA GPU)",
        description="Run benchmarks/roofline.py of the source checkout (needs a CUDA GPU; "
        "on CPU it exits with status 2). Options that adex does not know are passed to "
        "roofline.py, e.g. 'adex bench --quick --out results'.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``adex`` command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    prog = PROG
    try:
        try:
            args, extra = parser.parse_known_args(argv)
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else 0
        prog = f"{PROG} {args.command}"
        if args.command == "bench":
            return _cmd_bench(args, extra)
        if extra:
            raise CLIError(
                f"adex {args.command}: error: unrecognized arguments: "
                f"{' '.join(extra)} (see 'adex {args.command} --help')"
            )
        if args.command == "patterns":
            return _cmd_patterns(args)
        return _cmd_demo(args)
    except CLIError as err:
        print(err, file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line, no traceback
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{prog}: error: {type(err).__name__}: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
