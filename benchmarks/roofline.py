"""Roofline benchmark of the fused AdEx scans (forward, backward, forward+backward).

Usage (repository root)::

    python benchmarks/roofline.py [--quick] [--out benchmarks/results] [--budget-s 300]
    TRITON_INTERPRET=1 python benchmarks/roofline.py --interpret-smoke --out /tmp/bench_smoke

Needs a CUDA GPU: without one it prints one line and exits 0. ``--interpret-smoke`` instead
runs every step at tiny sizes on CPU through the Triton interpreter, to prove the script works;
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

Alongside: a device-to-device copy bandwidth (``dst.copy_(src)``, GB/s = 2 * bytes / time)
measured in the same run, achieved GB/s from the bytes model (``bytes_model.py``), the fraction
of the copy bandwidth, the memory-bound prediction, speed-ups of the fused kernels over each
baseline, peak memory of one fwd+bwd and the bytes saved for backward per neuron-step (summed
over the tensors packed by ``torch.autograd.graph.saved_tensors_hooks``).

Writes ``roofline.json`` and ``roofline.md`` (``roofline_smoke.*`` under ``--interpret-smoke``)
to ``--out``, after every workload, so that a run cut short still leaves its rows. A time
budget (``--budget-s``) skips the baselines that would not fit; the fused rows come first.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

try:
    from benchmarks import bytes_model
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    import bytes_model

WORKLOADS = [
    # name, T, batch, neurons, dtype
    ("W1", 256, 64, 16384, "fp32"),
    ("W2", 32, 64, 65536, "fp16"),
    ("W3", 4096, 16, 1024, "fp32"),
    ("W4", 256, 64, 16384, "bf16"),
]
SMOKE_WORKLOADS = [
    ("W1", 8, 2, 64, "fp32"),
    ("W2", 4, 2, 128, "fp16"),
    ("W3", 32, 1, 16, "fp32"),
    ("W4", 8, 2, 64, "bf16"),
]
DT = 0.1  # ms
SLOW_MS = 40.0  # calls slower than this are timed over a few calls with CUDA events
QUANTILES = [0.5, 0.2, 0.8]
COMPILE_MIN_LEFT_S = 75.0  # a compiled baseline starts only with this much budget left
SMOKE_LABEL = "NOT a timing: Triton interpreter smoke test on CPU at tiny sizes"
NEEDS_CUDA = (
    "roofline: needs a CUDA GPU and none is available; nothing was measured "
    "(--interpret-smoke checks the script on CPU)."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--out", default="benchmarks/results", help="output folder")
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
    return ap.parse_args(argv)


# -- helpers -------------------------------------------------------------------------------


def quantile(samples: list[float], q: float) -> float:
    """Linear-interpolated quantile of ``samples`` (as numpy's default)."""
    s = sorted(samples)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def git_commit(repo: Path) -> str:
    """The checked-out commit (``-dirty`` with local changes), ``$ADEX_GIT_COMMIT`` if set."""
    if os.environ.get("ADEX_GIT_COMMIT"):
        return os.environ["ADEX_GIT_COMMIT"]
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git checkout)"


def fmt_ms(r: dict) -> str:
    if r.get("median_ms") is None:
        return "-"
    return f"{r['median_ms']:.3f} ({r['p20_ms']:.3f}-{r['p80_ms']:.3f})"


def fmt_num(v, spec: str = ".1f", scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


class Bench:
    """Times callables: do_bench on CUDA (CUDA events for slow calls), perf_counter in smoke."""

    def __init__(self, torch, smoke: bool, quick: bool, deadline: float):
        self.torch = torch
        self.smoke = smoke
        self.quick = quick
        self.deadline = deadline
        self.slow_reps = 3 if quick else 5
        self.warmup_ms, self.rep_ms = (10, 60) if quick else (25, 200)

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if not self.smoke:
            self.torch.cuda.synchronize()

    def once_ms(self, fn) -> float:
        if self.smoke:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        self.torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def __call__(self, fn, *, warm: bool = False) -> dict:
        """Median/p20/p80 in ms of ``fn()``; ``warm``: it already ran once (no warmup)."""
        if self.left_s() <= 0:
            return {"status": "skipped", "note": "skipped: time budget"}
        if not warm:
            fn()
            self.sync()
        first = self.once_ms(fn)
        if self.smoke or first > SLOW_MS:
            samples = [first]
            want = 3 if self.smoke else self.slow_reps
            while len(samples) < want and self.left_s() > first / 1e3:
                samples.append(self.once_ms(fn))
            timer = "perf_counter" if self.smoke else "cuda events"
            note = f"{timer}, {len(samples)} calls"
            if not self.smoke and len(samples) < want:
                note += " (cut by the time budget)"
        else:
            import triton.testing

            samples = triton.testing.do_bench(
                fn, warmup=self.warmup_ms, rep=self.rep_ms, quantiles=QUANTILES
            )
            return {
                "status": "ok",
                "median_ms": samples[0],
                "p20_ms": samples[1],
                "p80_ms": samples[2],
                "timer": f"do_bench(warmup={self.warmup_ms}, rep={self.rep_ms})",
            }
        return {
            "status": "ok",
            "median_ms": quantile(samples, 0.5),
            "p20_ms": quantile(samples, 0.2),
            "p80_ms": quantile(samples, 0.8),
            "timer": note,
        }


# -- the benchmark -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.monotonic()
    if args.interpret_smoke:
        # Triton reads it when the kernels are decorated: before adex is imported
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    if not args.interpret_smoke and not torch.cuda.is_available():
        print(NEEDS_CUDA)
        return 0
    try:
        import pint  # noqa: F401  (adex imports it for its units)
    except ImportError:
        print(
            "roofline: the package 'pint' is missing and adex imports it: install it "
            "(pip install pint, or pip install --no-index --find-links <wheels> pint)."
        )
        return 2
    import triton

    import adex
    from adex.kernels.launch import INTERPRETED

    if args.interpret_smoke and not INTERPRETED:
        print("roofline: --interpret-smoke needs TRITON_INTERPRET=1 before adex is imported")
        return 2

    smoke = args.interpret_smoke
    device = torch.device("cpu" if smoke else "cuda")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "roofline_smoke" if smoke else "roofline"
    bench = Bench(torch, smoke, args.quick, t_start + args.budget_s)
    repo = Path(__file__).resolve().parent.parent
    wanted = {w.strip() for w in args.workloads.split(",") if w.strip()}
    table = SMOKE_WORKLOADS if smoke else WORKLOADS
    workloads = [w for w in table if w[0] in wanted]
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

    meta = {
        "label": SMOKE_LABEL if smoke else "timing",
        "interpret_smoke": smoke,
        "card": "cpu (Triton interpreter)" if smoke else torch.cuda.get_device_name(device),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(repo),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton.__version__,
        "adex": getattr(adex, "__version__", "?"),
        "quick": args.quick,
        "budget_s": args.budget_s,
        "dt_ms": DT,
        "kernel_version": 1,
        "kernel_config": "one program per 256 neurons, 4 warps, plain time loop, no prefetch",
    }
    if not smoke:
        prop = torch.cuda.get_device_properties(device)
        meta["card_memory_gib"] = round(prop.total_memory / 2**30, 1)
        meta["card_sms"] = prop.multi_processor_count
    report = {"meta": meta, "copy": None, "rows": [], "memory": []}

    def save() -> None:
        add_speedups(report)
        report["meta"]["elapsed_s"] = round(time.monotonic() - t_start, 1)
        (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=1))
        (out_dir / f"{stem}.md").write_text(markdown(report))

    def free() -> None:
        gc.collect()
        if not smoke:
            torch.cuda.empty_cache()

    # device-to-device copy bandwidth, the roof
    n_copy = 2**12 if smoke else 2**28  # fp32 elements: 1 GiB on the GPU
    src = torch.randn(n_copy, device=device)
    dst = torch.empty_like(src)
    r = bench(lambda d=dst, s=src: d.copy_(s))
    copy_bytes = 2 * src.nbytes
    report["copy"] = {
        "bytes_moved": copy_bytes,
        **r,
        "gbps": copy_bytes / (r["median_ms"] * 1e6),
        "gbps_p20_time": copy_bytes / (r["p20_ms"] * 1e6),
    }
    copy_gbps = report["copy"]["gbps"]
    del src, dst
    free()
    print(f"[{stem}] {meta['card']}: copy bandwidth {copy_gbps:.1f} GB/s")

    params = adex.AdExParams()
    surrogate = adex.surrogate.ReluGrad()

    def make_inputs(T: int, B: int, N: int, dtype: torch.dtype):
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.randn((T, B, N), generator=gen, device=device, dtype=torch.float32)
        x = (x.mul_(8.0).add_(12.0)).to(dtype)  # mA: a mix of silent and spiking neurons
        V0 = torch.rand((B, N), generator=gen, device=device) * 10.0 - 70.0
        w0 = torch.zeros((B, N), device=device)
        g = torch.randn((T, B, N), generator=gen, device=device, dtype=torch.float32).to(dtype)
        return x, V0, w0, g

    packed_cache = {}

    def fused(x, V0, w0):
        packed = packed_cache.get(x.device)
        if packed is None:
            packed = packed_cache[x.device] = params.packed(1, x.device)
        return adex.adex_scan(
            x, V0, w0, params, dt=DT, surrogate=surrogate, backend="triton",
            check_finite=False, packed_params=packed,
        ).spikes  # fmt: skip

    def fused_defaults(x, V0, w0):
        return adex.adex_scan(
            x, V0, w0, params, dt=DT, surrogate=surrogate, backend="triton"
        ).spikes

    def reference(x, V0, w0):
        return adex.adex_scan(
            x, V0, w0, params, dt=DT, surrogate=surrogate, backend="reference", check_finite=False
        ).spikes

    compiled_step = None

    def reference_compiled(x, V0, w0):
        nonlocal compiled_step
        from types import SimpleNamespace

        from adex.reference import adex_step_reference

        if compiled_step is None:
            # the 'bwd' mode replays one backward (retain_graph=True), which AOTAutograd's
            # donated buffers forbid
            try:
                import torch._functorch.config as functorch_config

                functorch_config.donated_buffer = False
            except (ImportError, AttributeError):
                pass

            def step(xt, V, w, p):
                s, V, w = adex_step_reference(
                    xt.to(torch.float32), V, w, p, dt=DT, surrogate=surrogate
                )
                return s.to(xt.dtype), V, w

            compiled_step = torch.compile(step, dynamic=False)  # dynamic=True fails to trace
        p = SimpleNamespace(**params.cast(torch.float32, x.device))
        V, w, spikes = V0, w0, []
        for t in range(x.shape[0]):
            s, V, w = compiled_step(x[t], V, w, p)
            spikes.append(s)
        return torch.stack(spikes)

    sj_factory, sj_note = spikingjelly_factory(torch, smoke)

    def measure_full(fn, x, V0, w0, g) -> tuple[dict, torch.Tensor, float]:
        """One fwd+bwd: peak memory, saved bytes for backward, first-call seconds."""
        xr = x.detach().requires_grad_(True)
        seen: dict[tuple, int] = {}

        def pack(t):
            if isinstance(t, torch.Tensor):
                seen[(t.data_ptr(), t.nbytes, t.dtype, tuple(t.shape))] = t.nbytes
            return t

        free()
        if not smoke:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        hooks_note = ""
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                spikes = fn(xr, V0, w0)
        except Exception as err:  # e.g. compiled graphs that refuse the hooks
            hooks_note = f"saved-tensor hooks failed ({type(err).__name__}); "
            seen.clear()
            spikes = fn(xr, V0, w0)
        (gx,) = torch.autograd.grad(spikes, xr, g)
        bench.sync()
        first_s = time.perf_counter() - t0
        mem = {
            "saved_bytes": sum(seen.values()) if seen or not hooks_note else None,
            "note": hooks_note.rstrip("; "),
        }
        ns = x.numel()
        mem["saved_bytes_per_neuron_step"] = (
            None if mem["saved_bytes"] is None else mem["saved_bytes"] / ns
        )
        if not smoke:
            peak = torch.cuda.max_memory_allocated(device)
            mem["peak_bytes"] = peak
            mem["peak_above_inputs_bytes"] = peak - base
        else:
            mem["peak_bytes"] = mem["peak_above_inputs_bytes"] = None
        del gx
        return mem, spikes.detach(), first_s

    def add_row(wl: tuple, method: str, mode: str, r: dict, extra: dict | None = None) -> dict:
        name, T, B, N, dt_name = wl
        ns = T * B * N
        row = {
            "workload": name, "T": T, "batch": B, "neurons": N, "dtype": dt_name,
            "neuron_steps": ns, "method": method, "mode": mode,
            "median_ms": None, "p20_ms": None, "p80_ms": None, "timer": None, "note": "",
        }  # fmt: skip
        row.update(r)
        row.update(extra or {})
        mb = bytes_model.bytes_per_neuron_step(mode, dt_name)
        row["model_bytes_per_neuron_step"] = mb
        row["predicted_ms"] = bytes_model.predicted_ms(mode, dt_name, ns, copy_gbps)
        if row["median_ms"]:
            row["achieved_gbps"] = mb * ns / (row["median_ms"] * 1e6)
            row["fraction_of_copy"] = row["achieved_gbps"] / copy_gbps
        else:
            row["achieved_gbps"] = row["fraction_of_copy"] = None
        report["rows"].append(row)
        shown = fmt_ms(row) if row["median_ms"] is not None else row["note"]
        t = time.monotonic() - t_start
        print(f"[{stem} {t:5.0f}s] {name} {dt_name} {method:>24} {mode:>10}: {shown}")
        return row

    def run_method(wl, method: str, fn, modes, x, V0, w0, g, ref_spikes=None, note: str = ""):
        """Memory pass, then the timed modes of one method. Returns the forward spikes."""
        name, dt_name = wl[0], wl[4]
        try:
            mem, spikes, first_s = measure_full(fn, x, V0, w0, g)
        except Exception as err:
            msg = f"error: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
            for mode in modes:
                add_row(wl, method, mode, {"status": "error", "note": msg})
            free()
            return None
        mem.update(workload=name, dtype=dt_name, method=method, first_call_s=round(first_s, 2))
        if ref_spikes is not None:
            mem["spike_mismatch_vs_fused"] = float(
                (spikes.float() != ref_spikes.float()).float().mean()
            )
        report["memory"].append(mem)
        xr = x.detach().requires_grad_(True)
        for mode in modes:
            try:
                if mode == "fwd_nograd":

                    def call():
                        with torch.no_grad():
                            fn(x, V0, w0)

                    r = bench(call)
                elif mode == "fwd":
                    r = bench(lambda: fn(xr, V0, w0), warm=True)
                elif mode == "bwd":
                    out = fn(xr, V0, w0)
                    r = bench(
                        lambda out=out: torch.autograd.grad(out, xr, g, retain_graph=True),
                        warm=True,
                    )
                    del out
                else:
                    r = bench(lambda: torch.autograd.grad(fn(xr, V0, w0), xr, g), warm=True)
            except Exception as err:
                r = {
                    "status": "error",
                    "note": f"error: {type(err).__name__}: {str(err).splitlines()[0][:160]}",
                }
            if note and r.get("status") == "ok":
                r["note"] = note
            add_row(wl, method, mode, r)
            free()
        return spikes

    # phase 1: the fused kernels on every workload (they matter most; they are fast)
    fused_spikes = {}
    for wl in workloads:
        name, T, B, N, dt_name = wl
        x, V0, w0, g = make_inputs(T, B, N, dtypes[dt_name])
        spikes = run_method(wl, "fused", fused, ("fwd_nograd", "fwd", "bwd", "full"), x, V0, w0, g)
        if spikes is not None:
            fused_spikes[name] = spikes.cpu() if not smoke else spikes
        xr = x.detach().requires_grad_(True)
        r = bench(lambda xr=xr, V0=V0, w0=w0: fused_defaults(xr, V0, w0))
        add_row(wl, "fused_defaults", "fwd", r, {"note": "check_finite=True, packed per call"})
        del x, V0, w0, g, xr, spikes
        free()
        save()

    # phase 2: the baselines, inside the time budget
    if not args.no_baselines:
        modes = ("fwd", "bwd", "full")
        for wl in workloads:
            name, T, B, N, dt_name = wl
            x, V0, w0, g = make_inputs(T, B, N, dtypes[dt_name])
            ref = fused_spikes.get(name)
            ref = None if ref is None else ref.to(device)
            baselines = [("reference_eager", reference, "", True)]
            compile_ok = not args.no_compile
            why = "skipped: --no-compile" if args.no_compile else ""
            if compile_ok and bench.left_s() < COMPILE_MIN_LEFT_S:
                compile_ok, why = False, "skipped: time budget (compile needs ~1 min)"
            baselines.append(
                ("reference_compiled_step", reference_compiled,
                 "torch.compile'd step, Python loop over T", compile_ok)
            )  # fmt: skip
            for method, fn, note, ok in baselines:
                if not ok or bench.left_s() <= 0:
                    for mode in modes:
                        reason = why if not ok else "skipped: time budget"
                        add_row(wl, method, mode, {"status": "skipped", "note": reason})
                    continue
                run_method(wl, method, fn, modes, x, V0, w0, g, ref_spikes=ref, note=note)
            if sj_factory is None:
                for mode in modes:
                    add_row(wl, "spikingjelly_izhikevich", mode, {"status": "n/a", "note": sj_note})
            elif bench.left_s() <= 0:
                for mode in modes:
                    add_row(
                        wl, "spikingjelly_izhikevich", mode,
                        {"status": "skipped", "note": "skipped: time budget"},
                    )  # fmt: skip
            else:
                run_method(
                    wl, "spikingjelly_izhikevich", sj_factory, modes, x, V0, w0, g,
                    note=sj_note,
                )  # fmt: skip
            del x, V0, w0, g, ref
            free()
            save()

    save()
    print(f"[{stem}] wrote {out_dir / (stem + '.json')} and {stem}.md ({meta['label']})")
    print(f"[{stem}] elapsed {time.monotonic() - t_start:.1f} s")
    return 0


def spikingjelly_factory(torch, smoke: bool):
    """(callable(x, V0, w0) -> spikes, note) for SpikingJelly's multi-step IzhikevichNode with
    its cupy or triton backend, or (None, reason)."""
    if smoke:
        return None, "n/a: SpikingJelly's cupy/triton backends need CUDA"
    try:
        from spikingjelly.activation_based import functional, neuron
    except Exception as err:
        return None, f"n/a: spikingjelly not importable ({type(err).__name__})"
    try:
        probe = neuron.IzhikevichNode(step_mode="m", backend="torch")
        backends = [b for b in ("triton", "cupy") if b in probe.supported_backends]
    except Exception as err:
        return None, f"n/a: IzhikevichNode failed ({type(err).__name__}: {err})"
    for backend in backends:
        try:
            node = neuron.IzhikevichNode(step_mode="m", backend=backend).cuda()
            probe_x = torch.zeros((2, 1, 64), device="cuda", requires_grad=True)
            node(probe_x).sum().backward()
            functional.reset_net(node)
        except Exception as err:
            last = f"{backend}: {type(err).__name__}"
            continue

        def run(x, V0, w0, node=node):
            functional.reset_net(node)  # SpikingJelly's own initial state (v = v_reset)
            return node(x)

        return run, f"SpikingJelly IzhikevichNode backend={backend} (own model and init)"
    if not backends:
        return None, "n/a: IzhikevichNode has no cupy/triton multi-step backend here"
    return None, f"n/a: no SpikingJelly backend ran ({last})"


def add_speedups(report: dict) -> None:
    """For every other row: ``fused_speedup`` = its median / the fused median (same workload
    and mode): the fused kernels' speed-up over a baseline, or for ``fused_defaults`` the cost
    of ``adex_scan``'s defaults."""
    fused = {
        (r["workload"], r["mode"]): r["median_ms"]
        for r in report["rows"]
        if r["method"] == "fused" and r["median_ms"]
    }
    for r in report["rows"]:
        f = fused.get((r["workload"], r["mode"]))
        if r["method"] != "fused" and r["median_ms"] and f:
            r["fused_speedup"] = r["median_ms"] / f


def summary_lines(report: dict) -> list[str]:
    """Median ms per workload and mode: fused, then each baseline with its ratio to fused."""
    methods = ["fused", "fused_defaults", "reference_eager", "reference_compiled_step",
               "spikingjelly_izhikevich"]  # fmt: skip
    cells: dict[tuple, dict] = {}
    keys: list[tuple] = []
    for r in report["rows"]:
        key = (r["workload"], r["dtype"], r["mode"])
        if key not in cells:
            cells[key] = {}
            keys.append(key)
        cells[key][r["method"]] = r
    lines = [
        "Summary: median ms; in brackets this method's median / the fused median (for a "
        "baseline: the fused kernels' speed-up over it).",
        "",
        "| workload | dtype | mode | " + " | ".join(methods) + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    for key in keys:
        row = []
        for m in methods:
            r = cells[key].get(m)
            if r is None:
                row.append("")
            elif r.get("median_ms") is None:
                row.append(str(r.get("status", "-")))
            elif r.get("fused_speedup") is not None:
                row.append(f"{r['median_ms']:.3f} ({r['fused_speedup']:.1f}x)")
            else:
                row.append(f"{r['median_ms']:.3f}")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(row) + " |")
    return lines


def markdown(report: dict) -> str:
    meta, copy = report["meta"], report["copy"]
    lines = []
    title = "Roofline: fused AdEx scans"
    if meta["interpret_smoke"]:
        title += f" -- {SMOKE_LABEL.upper()}"
    lines += [f"# {title}", ""]
    for key in ("label", "card", "date_utc", "git_commit", "python", "torch", "torch_cuda"):
        lines.append(f"- {key}: {meta.get(key)}")
    for key in ("triton", "kernel_version", "kernel_config", "quick", "elapsed_s"):
        lines.append(f"- {key}: {meta.get(key)}")
    if copy:
        lines += [
            "",
            f"Device-to-device copy (`dst.copy_(src)`, {copy['bytes_moved'] / 2**30:.2f} GiB "
            f"moved): **{copy['gbps']:.1f} GB/s** at the median "
            f"({fmt_ms(copy)} ms; {copy['timer']}).",
        ]
    lines += [
        "",
        "Model B: minimal bytes per neuron-step (`benchmarks/bytes_model.py`). GB/s = model "
        "bytes / median time. Predicted = model bytes / copy bandwidth. Speed-up = baseline "
        "median / fused median for the same mode (for `fused_defaults`: the slowdown caused by "
        "`check_finite=True` and per-call parameter packing).",
        "",
        "| workload | T x batch x neurons | dtype | method | mode | median ms (p20-p80) | "
        "model B | GB/s | % copy BW | predicted ms | this / fused | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        shape = f"{r['T']} x {r['batch']} x {r['neurons']}"
        pct = fmt_num(r.get("fraction_of_copy"), ".0f", 100.0)
        speed = fmt_num(r.get("fused_speedup"), ".1f")
        speed = speed + "x" if speed != "-" else speed
        lines.append(
            f"| {r['workload']} | {shape} | {r['dtype']} | {r['method']} | {r['mode']} | "
            f"{fmt_ms(r)} | {r['model_bytes_per_neuron_step']} | "
            f"{fmt_num(r.get('achieved_gbps'))} | {pct} | {fmt_num(r['predicted_ms'], '.3f')} | "
            f"{speed} | {r.get('note') or r.get('timer') or ''} |"
        )
    lines += ["", *summary_lines(report), ""]
    lines += [
        "Memory of one fwd+bwd (peak of `torch.cuda.max_memory_allocated` after "
        "`reset_peak_memory_stats`; above inputs = peak minus what was allocated before) and "
        "bytes saved for backward (`saved_tensors_hooks`, distinct tensors).",
        "",
        "| workload | dtype | method | peak GiB | peak above inputs GiB | saved B/neuron-step | "
        "first call s | spike mismatch vs fused | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in report["memory"]:
        lines.append(
            f"| {m['workload']} | {m['dtype']} | {m['method']} | "
            f"{fmt_num(m.get('peak_bytes'), '.2f', 1 / 2**30)} | "
            f"{fmt_num(m.get('peak_above_inputs_bytes'), '.2f', 1 / 2**30)} | "
            f"{fmt_num(m.get('saved_bytes_per_neuron_step'), '.2f')} | "
            f"{m.get('first_call_s')} | {fmt_num(m.get('spike_mismatch_vs_fused'), '.2e')} | "
            f"{m.get('note', '')} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
