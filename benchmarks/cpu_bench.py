"""CPU forward + backward of one AdExIF layer: the fused CPU kernels (``backend='cpu'``),
the eager per-step reference (``backend='reference'``) and, where importable, BrainPy's
jitted ``brainpy.state.AdExIF``, side by side in one run.

Workloads (T, batch, neurons): S1 (100, 32, 1024), S2 (500, 16, 256), S3 (50, 128, 4096);
BrainPy's defaults, dt = 0.1 ms, soft reset, float32, inputs U(5, 40) mA, BPTT of
``spikes.sum()`` into x (x requires grad). One timed call is ``init_state``, the forward
over all T steps and the backward; each figure is the median (and the range) over
``--rounds`` calls after one warm-up call (numba's compilation or cache load, JAX's jit),
``time.perf_counter`` (wall), with the process CPU time of the same calls
(``time.process_time``, all threads: the work, which other processes on a shared machine
inflate less than the wall time). The spike counts of the backends are printed (same input,
so the same computation: equal counts). The machine's core count (``os.cpu_count()``), its
load average before and after, torch's and numba's thread counts are printed with the
table.

    python benchmarks/cpu_bench.py [--rounds 5] [--ref-rounds 3] [--only S2] [--no-reference]
        [--json PATH]

BrainPy (``brainpy.state``, JAX) needs Python >= 3.12; where it cannot be imported the
column says so and is skipped. A side-by-side environment: a Python 3.12 venv with
``pip install torch==2.13.0 "brainpy==2.9.0" "jax[cpu]" numba pint`` and adex installed
``--no-deps -e .``; the BrainPy call is ``brainstate.transform.jit`` of
``brainstate.transform.grad`` of a ``brainstate.transform.scan`` over ``update`` (raw jax
transforms cannot track the neuron's state writes). With BrainPy present the table adds
BrainPy's time over the fused CPU path's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

import adex

WORKLOADS = {"S1": (100, 32, 1024), "S2": (500, 16, 256), "S3": (50, 128, 4096)}


def make_input(T: int, B: int, N: int, seed: int = 0) -> torch.Tensor:
    """``[T, B, N]`` float32 currents U(5, 40) mA."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((T, B, N), generator=g) * 35.0 + 5.0


def torch_call(backend: str, x: torch.Tensor):
    """One timed call on an adex backend; returns (wall s, CPU s, spike count)."""
    layer = adex.AdExIF(x.shape[2], backend=backend)
    xg = x.clone().requires_grad_(True)
    c0, t0 = time.process_time(), time.perf_counter()
    layer.init_state(x.shape[1])
    spikes = layer(xg)
    spikes.sum().backward()
    return time.perf_counter() - t0, time.process_time() - c0, int(spikes.detach().sum())


def brainpy_caller():
    """A function ``x -> (wall s, CPU s, spike count)`` timing BrainPy's jitted AdExIF forward +
    BPTT backward, or the reason it cannot run (a string)."""
    try:
        import brainpy
        import brainstate
        import brainunit as bu
        import jax.numpy as jnp
    except Exception as err:  # ImportError, or a broken install
        return f"not importable ({type(err).__name__}: {err}; BrainPy needs Python >= 3.12)"

    compiled = {}

    def build(shape):
        _, B, N = shape
        neuron = brainpy.state.AdExIF(N)

        def loss(x):
            with brainstate.environ.context(dt=0.1 * bu.ms):
                neuron.init_state(B)

                def step(carry, xk):
                    spk = neuron.update(xk * bu.mA)
                    return carry + spk.sum(), None

                total, _ = brainstate.transform.scan(step, jnp.zeros(()), x)
            return total

        # brainstate's transforms (raw jax ones cannot track the neuron's state writes);
        # grad with return_value gives (gradient, value)
        grad = brainstate.transform.grad(loss, argnums=0, return_value=True)
        return brainstate.transform.jit(lambda x: grad(x)[::-1])

    def call(x: torch.Tensor):
        shape = tuple(x.shape)
        if shape not in compiled:
            compiled[shape] = build(shape)
        xj = jnp.asarray(x.numpy())
        c0, t0 = time.process_time(), time.perf_counter()
        total, grad = compiled[shape](xj)
        grad.block_until_ready()
        return time.perf_counter() - t0, time.process_time() - c0, int(total)

    return call


def timed(call, x, rounds: int):
    """Median, min and max wall seconds of ``rounds`` calls after one warm-up, their median
    CPU seconds, and the spike count."""
    count = call(x)[2]
    runs = [call(x) for _ in range(rounds)]
    wall = [r[0] for r in runs]
    cpu = statistics.median(r[1] for r in runs)
    return statistics.median(wall), min(wall), max(wall), count, cpu


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="timed calls per fused/BrainPy cell")
    ap.add_argument("--ref-rounds", type=int, default=3, help="timed calls per reference cell")
    ap.add_argument("--only", nargs="*", choices=list(WORKLOADS), help="workloads to run")
    ap.add_argument("--no-reference", action="store_true", help="skip the eager reference")
    ap.add_argument("--json", help="write the figures to this file too")
    args = ap.parse_args(argv)

    import numba

    columns = {"cpu": lambda x: torch_call("cpu", x)}
    if not args.no_reference:
        columns["reference"] = lambda x: torch_call("reference", x)
    bp = brainpy_caller()
    if isinstance(bp, str):
        print(f"BrainPy: {bp}; column skipped")
    else:
        columns["brainpy"] = bp
    info = dict(cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
                numba_threads=numba.get_num_threads(), python=platform.python_version(),
                torch=torch.__version__, numba=numba.__version__, adex=adex.__version__,
                machine=platform.processor() or platform.machine(),
                load_before=" ".join(f"{v:.1f}" for v in os.getloadavg()))  # fmt: skip
    print("  ".join(f"{k} {v}" for k, v in info.items()))
    results = {}
    header = "| workload (T, batch, neurons) | " + " | ".join(
        f"{c} ms (min-max) [CPU ms]" for c in columns
    ) + " | reference / cpu (wall) [CPU] |" + (
        " brainpy / cpu (wall) [CPU] |" if "brainpy" in columns else ""
    ) + " spikes |"  # fmt: skip
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in args.only or list(WORKLOADS):
        shape = WORKLOADS[name]
        x = make_input(*shape)
        row = {}
        for col, call in columns.items():
            rounds = args.ref_rounds if col == "reference" else args.rounds
            row[col] = timed(call, x, rounds)
        results[name] = {
            c: dict(median_ms=1e3 * r[0], min_ms=1e3 * r[1], max_ms=1e3 * r[2], spikes=r[3],
                    cpu_ms=1e3 * r[4])
            for c, r in row.items()
        }  # fmt: skip
        cells = [f"{1e3 * r[0]:.1f} ({1e3 * r[1]:.1f}-{1e3 * r[2]:.1f}) [{1e3 * r[4]:.0f}]"
                 for r in row.values()]  # fmt: skip
        ratio = "-"
        if "reference" in row:
            ref, cpu = row["reference"], row["cpu"]
            ratio = f"{ref[0] / cpu[0]:.1f}x [{ref[4] / cpu[4]:.1f}x]"
        if "brainpy" in row:
            bpr, cpu = row["brainpy"], row["cpu"]
            ratio += f" | {bpr[0] / cpu[0]:.2f}x [{bpr[4] / cpu[4]:.2f}x]"
        counts = "/".join(str(r[3]) for r in row.values())
        print(f"| {name} {shape} | " + " | ".join(cells) + f" | {ratio} | {counts} |")
        sys.stdout.flush()
    info["load_after"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"load average after: {info['load_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(info=info, results=results), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
