"""Roofline benchmark of the fused AdEx scans (forward, backward, forward+backward).

Usage (repository root)::

    python benchmarks/roofline.py [--quick] [--out benchmarks/results] [--budget-s 300]
    TRITON_INTERPRET=1 python benchmarks/roofline.py --interpret-smoke --out /tmp/bench_smoke

Needs a CUDA GPU: without one it prints one line and exits 2 (as ``adex bench``).
``--interpret-smoke`` instead runs every step at tiny sizes on CPU through the Triton
interpreter, to prove the script works (into a temporary folder unless ``--out`` is given);
its numbers are NOT timings and are labelled so.

Per workload ``(T, batch, neurons, dtype)`` it times, with ``triton.testing.do_bench``
(median and 20th/80th percentiles; calls slower than ``SLOW_MS`` are timed with CUDA events
over a few calls instead):

- the fused kernels (``backend='triton'``, ``check_finite=False``, parameters packed once, as
  the modules cache them) in four modes: ``fwd_nograd``, ``fwd`` (V saved), ``bwd`` (the
  backward alone), ``full`` (fwd + bwd); and once the forward with ``adex_scan``'s defaults
  (``check_finite=True``, parameters packed per call) to show their overhead;
- the per-step PyTorch reference (``backend='reference'``), eager;
- the same reference step under ``torch.compile`` (the step is compiled, the Python loop over
  T is not: compiling the unrolled T-step scan takes minutes and grows with T);
- SpikingJelly's ``IzhikevichNode`` multi-step cupy/triton backend when it is importable (a
  different two-variable adaptive model with a similar cost per neuron-step), else ``n/a``.

Version 2 rows (after the fused rows of every workload, before the baselines):

- ``fused_ckpt<K>``: the fused kernels with ``checkpoint_every=K`` (``--checkpoint-every``,
  default 32) in modes ``fwd``, ``bwd``, ``full``; ``this / fused`` is the ratio to the
  default fused row of the same mode in the same run; the memory table splits the bytes saved
  for backward into newly allocated ones and ones that alias an input of the layer (same
  ``untyped_storage()`` as ``x``, ``V0``, ``w0`` or the packed parameters);
- ``fused_spikes_u8``: the no-grad forward with ``spike_dtype=torch.uint8``;
- W3: ``fused_block<B>``, the default fused ``full`` with
  ``adex.kernels.launch.GPU_BLOCK = B`` for B in ``--blocks``; W1 and W3:
  ``fused_block256_stages<S>``, the same with ``adex.kernels.launch.GPU_STAGES = S`` (the
  per-step loops software-pipelined ``S`` deep) for S in ``--stages`` (both restored
  afterwards);
- once per run: the T=1 launch overhead (a Python loop of ``layer.update(x)`` calls against
  the same loop of eager PyTorch steps) and a Triton recompile check (compiled variants of
  the two scan kernels after fwd+bwd calls at several T and batch sizes).

Alongside: a device-to-device copy bandwidth (``dst.copy_(src)``, GB/s = 2 * bytes / time)
measured in the same run, achieved GB/s from the bytes model (``bytes_model.py``), the fraction
of the copy bandwidth, the memory-bound prediction, speed-ups of the fused kernels over each
baseline, peak memory of one fwd+bwd and the bytes saved for backward per neuron-step (summed
over the tensors packed by ``torch.autograd.graph.saved_tensors_hooks``).

Writes ``roofline.json`` and ``roofline.md`` (``roofline_smoke.*`` under ``--interpret-smoke``)
to ``--out``, after every workload, so that a run cut short still leaves its rows. A time
budget (``--budget-s``) skips what would not fit: the fused rows come first, then the version 2
rows, then the baselines.

``roofline.py`` parses the options; ``harness.py`` runs the benchmark, ``v2_rows.py`` holds
the version 2 rows and once-per-run checks, ``report.py`` the derived figures and the
markdown.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

try:
    from benchmarks import bytes_model, harness
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    import bytes_model
    import harness


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's options from ``argv`` (default ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument(
        "--out",
        default=None,
        help="output folder (default benchmarks/results; a new temporary folder with "
        "--interpret-smoke, whose figures are no timings)",
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=300.0,
        help="wall-clock budget in s; baselines that would not fit are skipped (default 300)",
    )
    ap.add_argument(
        "--interpret-smoke",
        action="store_true",
        help="tiny sizes on CPU under TRITON_INTERPRET=1, only to prove the script works",
    )
    ap.add_argument("--workloads", default="W1,W2,W3,W4", help="comma-separated subset")
    ap.add_argument("--no-baselines", action="store_true", help="time the fused kernels only")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    ap.add_argument(
        "--checkpoint-every",
        type=int,
        default=bytes_model.DEFAULT_K,
        help=f"K of the checkpoint-mode rows (default {bytes_model.DEFAULT_K})",
    )
    ap.add_argument(
        "--blocks", default="64,128,256", help="GPU_BLOCK values of the W3 sweep (comma-separated)"
    )
    ap.add_argument(
        "--stages", default="2,4", help="GPU_STAGES values of the W1/W3 sweep (comma-separated)"
    )
    ap.add_argument("--no-v2", action="store_true", help="skip the version 2 rows")
    args = ap.parse_args(argv)
    if args.out is None:
        smoke = args.interpret_smoke
        args.out = tempfile.mkdtemp(prefix="adex_smoke_") if smoke else "benchmarks/results"
    return args


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the benchmark (``harness.run_benchmark``); the exit status."""
    return harness.run_benchmark(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
