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
"""

from __future__ import annotations

import argparse
import datetime
import gc
import inspect
import json
import math
import os
import platform
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

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
RECOMPILE_MIN_LEFT_S = 30.0  # the recompile check (it may compile a few variants) needs this
UPDATE_CALLS = 100  # T=1 launch-overhead loop: layer.update(x) calls per timed loop
UPDATE_SHAPE = (1024, 64)  # neurons, batch of the T=1 loop
SMOKE_UPDATE = (10, 64, 2)  # calls, neurons, batch under --interpret-smoke
RECOMPILE_SHAPES = [(64, 4), (1, 4), (37, 4), (64, 3), (64, 16)]  # (T, batch): T, then batch
SMOKE_RECOMPILE_SHAPES = [(8, 4), (1, 4), (5, 4), (8, 3)]
RECOMPILE_NEURONS = 1000  # not a multiple of 16: batch changes change M's divisibility
SMOKE_RECOMPILE_NEURONS = 10
# issue 4 targets, checked in the version 2 summary
TARGET_FULL_FRACTION = {"W1": 0.85, "W4": 0.85, "W3": 0.40}
TARGET_CKPT_SAVED = 0.5  # B newly saved per neuron-step
TARGET_CKPT_RATIO = 1.35  # checkpoint full / default full
TARGET_UPDATE_RATIO = 2.0  # T=1 update loop / eager op-chain loop
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


def error_note(err: Exception) -> str:
    return f"error: {type(err).__name__}: {str(err).splitlines()[0][:160]}"


def storage_ptr(t) -> int | None:
    """Address of the storage under ``t`` (shared by all views of one allocation)."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, AttributeError):
        return None


def split_saved(saved: dict, inputs) -> tuple[int, int]:
    """(new, alias) bytes of the packed tensors ``saved`` (``key -> (nbytes, storage ptr)``):
    alias when the storage is one of the ``inputs``' storages."""
    ptrs = {storage_ptr(t) for t in inputs if t is not None and t.nbytes}
    ptrs.discard(None)
    alias = sum(n for n, ptr in saved.values() if ptr in ptrs)
    return sum(n for n, _ in saved.values()) - alias, alias


def compiled_variants(kernel) -> tuple[int | None, str]:
    """(number of compiled variants, where they were found) of a Triton kernel.

    Triton >= 3.2: ``JITFunction.device_caches`` maps a device to a tuple whose first item is
    the dict of compiled kernels (3.6: 4 items, 3.9: 5 items); older versions:
    ``JITFunction.cache`` maps a device to that dict. ``(None, 'n/a')`` otherwise (e.g. the
    interpreter's ``InterpretedFunction``)."""
    caches = getattr(kernel, "device_caches", None)
    if isinstance(caches, dict):
        found = [e[0] for e in caches.values() if isinstance(e, tuple) and e]
        if all(isinstance(c, dict) for c in found):
            return sum(len(c) for c in found), "device_caches"
    cache = getattr(kernel, "cache", None)
    if isinstance(cache, dict) and all(isinstance(c, dict) for c in cache.values()):
        return sum(len(c) for c in cache.values()), "cache"
    return None, "n/a"


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
    from adex.kernels import launch
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
        "kernel_version": 2,
        "kernel_config": (
            f"one program per GPU_BLOCK={launch.GPU_BLOCK} neurons, num_warps = GPU_BLOCK/64 "
            "(1-8), plain time loop, no prefetch, forward step shared (kernels/step.py)"
        ),
        "checkpoint_every": args.checkpoint_every,
    }
    if not smoke:
        prop = torch.cuda.get_device_properties(device)
        meta["card_memory_gib"] = round(prop.total_memory / 2**30, 1)
        meta["card_sms"] = prop.multi_processor_count
    report = {"meta": meta, "copy": None, "rows": [], "memory": []}
    report.update(launch_overhead=None, recompile=None, v2_summary=None)

    def save() -> None:
        add_speedups(report)
        report["v2_summary"] = v2_summary(report)
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

    def fused(x, V0, w0, **options):
        """The fused scan as the modules call it; ``options``: more adex_scan arguments."""
        packed = packed_cache.get(x.device)
        if packed is None:
            packed = packed_cache[x.device] = params.packed(1, x.device)
        return adex.adex_scan(
            x, V0, w0, params, dt=DT, surrogate=surrogate, backend="triton",
            check_finite=False, packed_params=packed, **options,
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
        seen: dict[tuple, tuple[int, int | None]] = {}

        def pack(t):
            if isinstance(t, torch.Tensor):
                key = (t.data_ptr(), t.nbytes, t.dtype, tuple(t.shape))
                seen[key] = (t.nbytes, storage_ptr(t))
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
        new, alias = split_saved(seen, (xr, V0, w0, *packed_cache.values()))
        (gx,) = torch.autograd.grad(spikes, xr, g)
        bench.sync()
        first_s = time.perf_counter() - t0
        ok = bool(seen) or not hooks_note
        mem = {
            "saved_bytes": new + alias if ok else None,
            "saved_new_bytes": new if ok else None,
            "saved_alias_bytes": alias if ok else None,
            "note": hooks_note.rstrip("; "),
        }
        ns = x.numel()
        for key in ("saved", "saved_new", "saved_alias"):
            total = mem[f"{key}_bytes"]
            mem[f"{key}_bytes_per_neuron_step"] = None if total is None else total / ns
        if not smoke:
            peak = torch.cuda.max_memory_allocated(device)
            mem["peak_bytes"] = peak
            mem["peak_above_inputs_bytes"] = peak - base
        else:
            mem["peak_bytes"] = mem["peak_above_inputs_bytes"] = None
        del gx
        return mem, spikes.detach(), first_s

    def add_row(
        wl: tuple,
        method: str,
        mode: str,
        r: dict,
        extra: dict | None = None,
        model: dict | None = None,
    ) -> dict:
        """One report row; ``model``: options of ``bytes_model.bytes_per_neuron_step``."""
        name, T, B, N, dt_name = wl
        model = model or {}
        ns = T * B * N
        row = {
            "workload": name, "T": T, "batch": B, "neurons": N, "dtype": dt_name,
            "neuron_steps": ns, "method": method, "mode": mode,
            "median_ms": None, "p20_ms": None, "p80_ms": None, "timer": None, "note": "",
        }  # fmt: skip
        row.update(r)
        row.update(extra or {})
        mb = bytes_model.bytes_per_neuron_step(mode, dt_name, **model)
        row["model_options"] = {k: str(v) for k, v in model.items()}
        row["model_bytes_per_neuron_step"] = mb
        row["predicted_ms"] = bytes_model.predicted_ms(mode, dt_name, ns, copy_gbps, **model)
        if row["median_ms"]:
            row["achieved_gbps"] = mb * ns / (row["median_ms"] * 1e6)
            row["fraction_of_copy"] = row["achieved_gbps"] / copy_gbps
        else:
            row["achieved_gbps"] = row["fraction_of_copy"] = None
        if "checkpoint_every" in model and mode in ("bwd", "full"):  # scratch counted as DRAM
            mbs = bytes_model.bytes_per_neuron_step(mode, dt_name, scratch=True, **model)
            row["model_bytes_with_scratch"] = mbs
            if row["median_ms"]:
                row["achieved_gbps_with_scratch"] = mbs * ns / (row["median_ms"] * 1e6)
                row["fraction_of_copy_with_scratch"] = row["achieved_gbps_with_scratch"] / copy_gbps
        report["rows"].append(row)
        shown = fmt_ms(row) if row["median_ms"] is not None else row["note"]
        t = time.monotonic() - t_start
        print(f"[{stem} {t:5.0f}s] {name} {dt_name} {method:>24} {mode:>10}: {shown}")
        return row

    def run_method(
        wl,
        method: str,
        fn,
        modes,
        x,
        V0,
        w0,
        g,
        ref_spikes=None,
        note: str = "",
        model: dict | None = None,
    ):
        """Memory pass, then the timed modes of one method. Returns the forward spikes."""
        name, dt_name = wl[0], wl[4]
        try:
            mem, spikes, first_s = measure_full(fn, x, V0, w0, g)
        except Exception as err:
            msg = error_note(err)
            for mode in modes:
                add_row(wl, method, mode, {"status": "error", "note": msg}, model=model)
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
                r = {"status": "error", "note": error_note(err)}
            if note and r.get("status") == "ok":
                r["note"] = note
            add_row(wl, method, mode, r, model=model)
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

    # phase 1b: the version 2 rows per workload; phase 1c: the once-per-run checks
    if not args.no_v2:
        ctx = SimpleNamespace(
            torch=torch, adex=adex, launch=launch, bench=bench, device=device, smoke=smoke,
            fused=fused, run_method=run_method, add_row=add_row, free=free,
            fused_spikes=fused_spikes, K=args.checkpoint_every,
            blocks=[int(b) for b in args.blocks.split(",") if b.strip()],
            stages=[int(b) for b in args.stages.split(",") if b.strip()],
        )  # fmt: skip
        for wl in workloads:
            x, V0, w0, g = make_inputs(*wl[1:4], dtypes[wl[4]])
            v2_workload_rows(ctx, wl, x, V0, w0, g)
            del x, V0, w0, g
            free()
            save()
        report["launch_overhead"] = launch_overhead(ctx)
        free()
        save()
        report["recompile"] = recompile_check(ctx)
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


# -- version 2 rows ------------------------------------------------------------------------

SKIPPED = {"status": "skipped", "note": "skipped: time budget"}


def v2_workload_rows(ctx, wl: tuple, x, V0, w0, g) -> None:
    """The version 2 rows of one workload: checkpoint mode, 1-byte spikes, (W3) block sweep."""
    checkpoint_rows(ctx, wl, x, V0, w0, g)
    byte_spike_row(ctx, wl, x, V0, w0)
    configs = []
    if wl[0] == "W3":
        configs += [(block, None) for block in ctx.blocks]
    if wl[0] in ("W1", "W3"):
        configs += [(256, stages) for stages in ctx.stages]
    if configs:
        launch_sweep(ctx, wl, x, V0, w0, g, configs)


def checkpoint_rows(ctx, wl: tuple, x, V0, w0, g) -> None:
    """``fused_ckpt<K>`` in modes fwd/bwd/full, with its memory pass (saved bytes split)."""
    method, modes = f"fused_ckpt{ctx.K}", ("fwd", "bwd", "full")
    model = {"checkpoint_every": ctx.K, "T": wl[1]}
    if ctx.bench.left_s() <= 0:
        for mode in modes:
            ctx.add_row(wl, method, mode, dict(SKIPPED), model=model)
        return
    ref = ctx.fused_spikes.get(wl[0])
    ref = None if ref is None else ref.to(ctx.device)
    fn = partial(ctx.fused, checkpoint_every=ctx.K)
    ctx.run_method(
        wl, method, fn, modes, x, V0, w0, g, ref_spikes=ref,
        note=f"checkpoint_every={ctx.K}", model=model,
    )  # fmt: skip


def spike_mismatch(spikes, ref) -> float | None:
    """Fraction of neuron-steps where two spike tensors (any dtypes) differ."""
    if ref is None:
        return None
    ref = ref.to(spikes.device)
    return float((spikes.to(ref.dtype) != ref).float().mean())


def byte_spike_row(ctx, wl: tuple, x, V0, w0) -> None:
    """``fused_spikes_u8``: the no-grad forward writing ``torch.uint8`` spikes."""
    torch = ctx.torch
    method, model = "fused_spikes_u8", {"spike_dtype": "uint8"}
    if ctx.bench.left_s() <= 0:
        ctx.add_row(wl, method, "fwd_nograd", dict(SKIPPED), model=model)
        return

    def call():
        with torch.no_grad():
            return ctx.fused(x, V0, w0, spike_dtype=torch.uint8)

    extra = {}
    try:
        extra["spike_mismatch_vs_fused"] = spike_mismatch(call(), ctx.fused_spikes.get(wl[0]))
        ctx.free()
        r = ctx.bench(call, warm=True)
    except Exception as err:
        r = {"status": "error", "note": error_note(err)}
    if r.get("status") == "ok":
        r["note"] = "spike_dtype=torch.uint8, no grad"
    ctx.add_row(wl, method, "fwd_nograd", r, extra=extra, model=model)
    ctx.free()


def launch_sweep(ctx, wl: tuple, x, V0, w0, g, configs: list) -> None:
    """The default fused ``full`` at ``launch.GPU_BLOCK = B`` and ``launch.GPU_STAGES = S`` for
    each ``(B, S)`` of ``configs`` (rows ``fused_block<B>``, ``fused_block<B>_stages<S>``);
    the original settings are restored afterwards, also on errors."""
    torch = ctx.torch
    xr = x.detach().requires_grad_(True)
    original = ctx.launch.GPU_BLOCK, ctx.launch.GPU_STAGES
    ignored = " (ignored on CPU: the interpreter's blocks are up to 1024 wide)" if ctx.smoke else ""
    try:
        for block, stages in configs:
            ctx.launch.GPU_BLOCK, ctx.launch.GPU_STAGES = block, stages
            method = f"fused_block{block}" + ("" if stages is None else f"_stages{stages}")
            if ctx.bench.left_s() <= 0:
                ctx.add_row(wl, method, "full", dict(SKIPPED), extra={"gpu_block": block})
                continue
            try:
                r = ctx.bench(lambda: torch.autograd.grad(ctx.fused(xr, V0, w0), xr, g))
            except Exception as err:
                r = {"status": "error", "note": error_note(err)}
            if r.get("status") == "ok":
                r["note"] = f"GPU_BLOCK={block}, GPU_STAGES={stages}{ignored}"
            ctx.add_row(wl, method, "full", r, extra={"gpu_block": block, "gpu_stages": stages})
            ctx.free()
    finally:
        ctx.launch.GPU_BLOCK, ctx.launch.GPU_STAGES = original


def update_loop(torch, layer, x, calls: int):
    """``calls`` T=1 ``layer.update(x)`` calls in a Python loop, without grad."""

    def run():
        with torch.no_grad():
            for _ in range(calls):
                layer.update(x)

    return run


def reference_step_loop(torch, layer, x, calls: int):
    """The same loop of ``adex.reference.adex_step_reference`` (the eager per-step reference
    of the same model; state carried between calls as the layer carries its own)."""
    from adex.reference import adex_step_reference

    p = SimpleNamespace(**layer.params.cast(torch.float32, x.device))
    state = [layer.V.clone(), layer.w.clone()]

    def run():
        with torch.no_grad():
            V, w = state
            for _ in range(calls):
                _, V, w = adex_step_reference(x, V, w, p, dt=layer.dt, surrogate=layer.spk_fun)
            state[:] = [V, w]

    return run


def euler_chain_loop(torch, layer, x, calls: int):
    """The same loop of a hand-written AdEx step (reset, exponential drive, Euler update of V
    and w) as a chain of 22 eager elementwise ops on tensors V and w, scalar parameters."""
    p = SimpleNamespace(**layer.params.cast(torch.float32, x.device))
    theta, dt = p.V_th - p.V_reset, layer.dt
    c_v, c_w = dt / p.tau, 1.0 - math.exp(-dt / p.tau_w)
    state = [layer.V.clone(), layer.w.clone()]

    def run():
        with torch.no_grad():
            V, w = state
            for _ in range(calls):
                s = (V >= p.V_th).to(V.dtype)  # 2 ops
                V = V - theta * s  # 2
                w = w + p.b * s  # 2
                e = torch.exp((V - p.V_T) / p.delta_T)  # 3
                V = V + c_v * ((p.V_rest - V) + p.delta_T * e + p.R * (x - w))  # 8
                w = w + c_w * (p.a * (V - p.V_rest) - w)  # 5
            state[:] = [V, w]

    return run


def launch_overhead(ctx) -> dict:
    """The T=1 launch-overhead row: a Python loop of ``layer.update(x)`` on
    ``AdExIF(backend='triton', check_finite=False)`` against the same loop of eager steps."""
    torch, adex = ctx.torch, ctx.adex
    calls, n, batch = SMOKE_UPDATE if ctx.smoke else (UPDATE_CALLS, *UPDATE_SHAPE)
    out = {"calls_per_loop": calls, "neurons": n, "batch": batch, "status": "ok",
           "label": SMOKE_LABEL if ctx.smoke else "timing"}  # fmt: skip
    if ctx.bench.left_s() <= 0:
        return {**out, **SKIPPED}
    try:
        layer = adex.AdExIF(n, backend="triton", check_finite=False).to(ctx.device)
        layer.init_state(batch, device=ctx.device)
        x = torch.full((batch, n), 12.0, device=ctx.device)
        loops = {
            "update_triton": update_loop(torch, layer, x, calls),
            "eager_reference_step": reference_step_loop(torch, layer, x, calls),
            "eager_euler_chain": euler_chain_loop(torch, layer, x, calls),
        }
        for name, fn in loops.items():
            r = ctx.bench(fn)
            if r.get("median_ms") is not None:
                r["us_per_call"] = r["median_ms"] * 1e3 / calls
            out[name] = r
    except Exception as err:
        return {**out, "status": "error", "note": error_note(err)}
    fused_ms = out["update_triton"].get("median_ms")
    for name in ("eager_reference_step", "eager_euler_chain"):
        other = out[name].get("median_ms")
        out[f"ratio_vs_{name}"] = fused_ms / other if fused_ms and other else None
    shown = fmt_num(out.get("ratio_vs_eager_euler_chain"), ".2f")
    print(f"[launch overhead] update loop / eager Euler chain loop: {shown} ({out['label']})")
    return out


def recompile_check(ctx) -> dict:
    """Compiled variants of the two scan kernels after fused fwd+bwd calls (default and
    checkpoint mode) at each (T, batch) of the check; variants added after the first shape are
    recompilations caused by T or batch."""
    import triton

    torch = ctx.torch
    from adex.kernels import scan_bwd, scan_fwd

    kernels = {"fwd": scan_fwd._adex_scan_fwd_kernel, "bwd": scan_bwd._adex_scan_bwd_kernel}
    shapes = SMOKE_RECOMPILE_SHAPES if ctx.smoke else RECOMPILE_SHAPES
    n = SMOKE_RECOMPILE_NEURONS if ctx.smoke else RECOMPILE_NEURONS
    out = {"triton": triton.__version__, "neurons": n, "checkpoint_every": ctx.K,
           "cache_attribute": compiled_variants(kernels["fwd"])[1], "steps": [],
           "status": "ok", "note": ""}  # fmt: skip
    if ctx.bench.left_s() < (0.0 if ctx.smoke else RECOMPILE_MIN_LEFT_S):
        return {**out, **SKIPPED}
    try:
        for T, B in shapes:
            if ctx.bench.left_s() <= 0:
                out["note"] = "cut by the time budget"
                break
            x = (torch.randn((T, B, n), device=ctx.device) * 8.0 + 12.0).requires_grad_(True)
            V0 = torch.full((B, n), -65.0, device=ctx.device)
            w0 = torch.zeros((B, n), device=ctx.device)
            for options in ({}, {"checkpoint_every": ctx.K}):
                spikes = ctx.fused(x, V0, w0, **options)
                torch.autograd.grad(spikes, x, torch.ones_like(spikes))
            ctx.bench.sync()
            step = {"T": T, "batch": B}
            for key, kernel in kernels.items():
                step[f"{key}_variants"] = compiled_variants(kernel)[0]
            out["steps"].append(step)
    except Exception as err:
        out.update(status="error", note=error_note(err))
    if out["steps"]:
        first, last = out["steps"][0], out["steps"][-1]
        for key in kernels:
            a, b = first[f"{key}_variants"], last[f"{key}_variants"]
            out[f"{key}_new_after_first_shape"] = None if a is None else b - a
    new = {k: out.get(f"{k}_new_after_first_shape") for k in kernels}
    shown = ", ".join(f"{k} {'n/a' if v is None else v}" for k, v in new.items())
    print(f"[recompile check] variants added after the first shape: {shown}")
    return out


def v2_meets(value, target: float | None, smoke: bool, upper: bool = True) -> bool | None:
    """Whether ``value`` meets ``target`` (``<=`` if ``upper`` else ``>=``); None when either
    is missing or under the smoke test (its sizes and timings mean nothing for the targets)."""
    if smoke or value is None or target is None:
        return None
    return value <= target if upper else value >= target


def v2_summary(report: dict) -> dict:
    """Version 2 figures per workload against the issue 4 targets, plus the once-per-run
    checks. Ratios are medians of this run."""
    smoke = report["meta"]["interpret_smoke"]
    ck = f"fused_ckpt{report['meta'].get('checkpoint_every')}"
    rows = {(r["workload"], r["method"], r["mode"]): r for r in report["rows"]}
    mem = {(m["workload"], m["method"]): m for m in report["memory"]}

    def get(table, key, field):
        return (table.get(key) or {}).get(field)

    def ratio(a, b):
        return a / b if a and b else None

    out: dict = {"label": SMOKE_LABEL if smoke else "timing", "workloads": {}}
    for name in dict.fromkeys(r["workload"] for r in report["rows"]):
        w = {
            "fused_full_fraction_of_copy": get(rows, (name, "fused", "full"), "fraction_of_copy"),
            "target_full_fraction": TARGET_FULL_FRACTION.get(name),
            "ckpt_full_vs_default_full": ratio(
                get(rows, (name, ck, "full"), "median_ms"),
                get(rows, (name, "fused", "full"), "median_ms"),
            ),
            "ckpt_saved_new_bytes_per_neuron_step": get(
                mem, (name, ck), "saved_new_bytes_per_neuron_step"
            ),
            "ckpt_saved_alias_bytes_per_neuron_step": get(
                mem, (name, ck), "saved_alias_bytes_per_neuron_step"
            ),
            "default_saved_new_bytes_per_neuron_step": get(
                mem, (name, "fused"), "saved_new_bytes_per_neuron_step"
            ),
            "ckpt_peak_vs_default_peak": ratio(
                get(mem, (name, ck), "peak_above_inputs_bytes"),
                get(mem, (name, "fused"), "peak_above_inputs_bytes"),
            ),
            "u8_fwd_nograd_vs_float": ratio(
                get(rows, (name, "fused_spikes_u8", "fwd_nograd"), "median_ms"),
                get(rows, (name, "fused", "fwd_nograd"), "median_ms"),
            ),
            "u8_model_ratio": ratio(
                get(rows, (name, "fused_spikes_u8", "fwd_nograd"), "model_bytes_per_neuron_step"),
                get(rows, (name, "fused", "fwd_nograd"), "model_bytes_per_neuron_step"),
            ),
        }
        w["meets_full_fraction"] = v2_meets(
            w["fused_full_fraction_of_copy"], w["target_full_fraction"], smoke, upper=False
        )
        w["meets_ckpt_ratio"] = v2_meets(w["ckpt_full_vs_default_full"], TARGET_CKPT_RATIO, smoke)
        w["meets_ckpt_saved"] = v2_meets(
            w["ckpt_saved_new_bytes_per_neuron_step"], TARGET_CKPT_SAVED, smoke
        )
        out["workloads"][name] = w
    out["block_sweep"] = [
        {"workload": r["workload"], "gpu_block": r.get("gpu_block"),
         "gpu_stages": r.get("gpu_stages"), "median_ms": r["median_ms"],
         "fraction_of_copy": r.get("fraction_of_copy"), "note": r.get("note")}
        for r in report["rows"] if r["method"].startswith("fused_block")
    ]  # fmt: skip
    lo = report.get("launch_overhead") or {}
    for name in ("eager_reference_step", "eager_euler_chain"):
        out[f"update_ratio_vs_{name}"] = lo.get(f"ratio_vs_{name}")
        out[f"meets_update_ratio_vs_{name}"] = v2_meets(
            lo.get(f"ratio_vs_{name}"), TARGET_UPDATE_RATIO, smoke
        )
    rc = report.get("recompile") or {}
    for key in ("fwd", "bwd"):
        out[f"recompiles_{key}"] = rc.get(f"{key}_new_after_first_shape")
        out[f"meets_no_recompile_{key}"] = v2_meets(out[f"recompiles_{key}"], 0, smoke)
    return out


SJ_IMPLEMENTATION_ENV = "SJ_IZHIKEVICH_CUDA_IMPLEMENTATION"
"""SpikingJelly 2.0 picks its CUDA implementation of the Izhikevich op from this variable
(auto, cuda, triton, torch), read when spikingjelly is imported."""


def spikingjelly_factory(torch, smoke: bool):
    """(callable(x, V0, w0) -> spikes, note) for SpikingJelly's fused multi-step
    IzhikevichNode, or (None, reason). SpikingJelly 2.0 selects the implementation with
    ``SJ_IZHIKEVICH_CUDA_IMPLEMENTATION`` (set to 'triton' here unless already set); older
    releases take ``backend='triton'`` or ``'cupy'``."""
    if smoke:
        return None, "n/a: SpikingJelly's fused backends need CUDA"
    os.environ.setdefault(SJ_IMPLEMENTATION_ENV, "triton")
    try:
        import spikingjelly
        from spikingjelly.activation_based import functional, neuron
    except Exception as err:
        return None, f"n/a: spikingjelly not importable ({type(err).__name__}: {err})"
    version = getattr(spikingjelly, "__version__", "?")
    if "backend" in inspect.signature(neuron.IzhikevichNode.__init__).parameters:
        try:
            probe = neuron.IzhikevichNode(step_mode="m", backend="torch")
            configs = [({"backend": b}, f"backend={b}") for b in ("triton", "cupy")
                       if b in probe.supported_backends]  # fmt: skip
        except Exception as err:
            return None, f"n/a: IzhikevichNode failed ({type(err).__name__}: {err})"
    else:  # 2.0: one multi-step op, implementation chosen by the environment variable
        configs = [({}, f"{SJ_IMPLEMENTATION_ENV}={os.environ[SJ_IMPLEMENTATION_ENV]}")]
    last = "none tried"
    for kwargs, label in configs:
        try:
            node = neuron.IzhikevichNode(step_mode="m", **kwargs).cuda()
            probe_x = torch.zeros((2, 1, 64), device="cuda", requires_grad=True)
            node(probe_x).sum().backward()
            functional.reset_net(node)
        except Exception as err:
            last = f"{label}: {type(err).__name__}: {err}"
            continue

        def run(x, V0, w0, node=node):
            functional.reset_net(node)  # SpikingJelly's own initial state (v = v_reset)
            return node(x)

        return run, f"SpikingJelly {version} IzhikevichNode {label} (own model and init)"
    if not configs:
        return None, "n/a: IzhikevichNode has no cupy/triton multi-step backend here"
    return None, f"n/a: no SpikingJelly configuration ran ({last})"


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
    ck = f"fused_ckpt{report['meta'].get('checkpoint_every')}"
    methods = ["fused", "fused_defaults", ck, "fused_spikes_u8", "reference_eager",
               "reference_compiled_step", "spikingjelly_izhikevich"]  # fmt: skip
    cells: dict[tuple, dict] = {}
    keys: list[tuple] = []
    for r in report["rows"]:
        if r["method"] not in methods:
            continue
        key = (r["workload"], r["dtype"], r["mode"])
        if key not in cells:
            cells[key] = {}
            keys.append(key)
        cells[key][r["method"]] = r
    lines = [
        "Summary: median ms; in brackets this method's median / the fused median (for a "
        "baseline: the fused kernels' speed-up over it; for the checkpoint and uint8-spike "
        "rows: their time relative to the default fused kernels).",
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


def fmt_meets(value, spec: str, meets: bool | None, scale: float = 1.0) -> str:
    """A number with its target verdict: '0.25 (yes)', '1.50 (no)', or just the number."""
    text = fmt_num(value, spec, scale)
    return text if meets is None else f"{text} ({'yes' if meets else 'no'})"


def v2_lines(report: dict) -> list[str]:
    """Markdown of the version 2 summary, the block sweep and the once-per-run checks."""
    v2 = report.get("v2_summary") or v2_summary(report)
    k = report["meta"].get("checkpoint_every")
    lines = [
        f"## Version 2 checks ({v2['label']})",
        "",
        f"Targets (issue 4): fused full >= 85% of copy bandwidth at W1/W4, >= 40% at W3; "
        f"checkpoint mode (K={k}) <= {TARGET_CKPT_SAVED} B newly saved per neuron-step and <= "
        f"{TARGET_CKPT_RATIO}x the default full time; T=1 update loop <= "
        f"{TARGET_UPDATE_RATIO}x an eager op-chain loop; no recompilation when T or batch "
        "changes. (yes/no) marks a target; none under the smoke test.",
        "",
        "| workload | fused full % copy | ckpt full / default full | ckpt saved new B/ns | "
        "ckpt saved alias B/ns | default saved new B/ns | ckpt / default peak above inputs | "
        "u8 / float fwd_nograd time (model) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, w in v2["workloads"].items():
        u8 = fmt_num(w["u8_fwd_nograd_vs_float"], ".2f")
        lines.append(
            f"| {name} | "
            f"{fmt_meets(w['fused_full_fraction_of_copy'], '.0f', w['meets_full_fraction'], 100)}"
            f" | {fmt_meets(w['ckpt_full_vs_default_full'], '.2f', w['meets_ckpt_ratio'])} | "
            f"{fmt_meets(w['ckpt_saved_new_bytes_per_neuron_step'], '.3f', w['meets_ckpt_saved'])}"
            f" | {fmt_num(w['ckpt_saved_alias_bytes_per_neuron_step'], '.3f')} | "
            f"{fmt_num(w['default_saved_new_bytes_per_neuron_step'], '.3f')} | "
            f"{fmt_num(w['ckpt_peak_vs_default_peak'], '.2f')} | "
            f"{u8} ({fmt_num(w['u8_model_ratio'], '.3f')}) |"
        )
    if v2["block_sweep"]:
        lines += ["", "Block-size sweep (default fused full):", "",
                  "| workload | GPU_BLOCK | GPU_STAGES | median ms | % copy BW | note |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for b in v2["block_sweep"]:
            lines.append(
                f"| {b['workload']} | {b['gpu_block']} | {b.get('gpu_stages')} | "
                f"{fmt_num(b['median_ms'], '.3f')} | "
                f"{fmt_num(b['fraction_of_copy'], '.0f', 100.0)} | {b['note'] or ''} |"
            )
    lines += ["", *launch_overhead_lines(report.get("launch_overhead"), v2)]
    lines += ["", *recompile_lines(report.get("recompile"), v2)]
    return lines


def launch_overhead_lines(lo: dict | None, v2: dict) -> list[str]:
    """Markdown of the T=1 launch-overhead check."""
    if not lo:
        return ["T=1 launch overhead: not run."]
    head = (
        f"T=1 launch overhead ({lo['label']}): a loop of {lo['calls_per_loop']} calls, "
        f"batch {lo['batch']} x {lo['neurons']} neurons, no grad; status {lo['status']}"
    )
    lines = [head + (f" ({lo['note']})" if lo.get("note") else "") + ".", ""]
    for name, what in (
        ("update_triton", "`AdExIF(backend='triton', check_finite=False).update(x)`"),
        ("eager_reference_step", "eager `adex.reference.adex_step_reference`"),
        ("eager_euler_chain", "eager hand-written Euler step, 22 elementwise ops"),
    ):
        r = lo.get(name) or {}
        lines.append(
            f"- {what}: {fmt_ms(r)} ms per loop, {fmt_num(r.get('us_per_call'), '.1f')} us per call"
        )
    for name in ("eager_reference_step", "eager_euler_chain"):
        ratio = fmt_meets(
            v2.get(f"update_ratio_vs_{name}"), ".2f", v2.get(f"meets_update_ratio_vs_{name}")
        )
        lines.append(f"- update loop / {name} loop: {ratio}")
    return lines


def recompile_lines(rc: dict | None, v2: dict) -> list[str]:
    """Markdown of the Triton recompile check."""
    if not rc:
        return ["Recompile check: not run."]
    lines = [
        f"Recompile check (triton {rc['triton']}; compiled variants counted in the kernels' "
        f"`{rc['cache_attribute']}`, or n/a where they keep none, as under the "
        f"interpreter): fused fwd+bwd, default and checkpoint_every={rc['checkpoint_every']}, "
        f"{rc['neurons']} neurons, at each (T, batch) in turn; status {rc['status']}"
        + (f" ({rc['note']})" if rc.get("note") else "")
        + ".",
        "",
        "| T | batch | fwd kernel variants | bwd kernel variants |",
        "|---|---|---|---|",
    ]
    for s in rc["steps"]:
        fwd = "n/a" if s["fwd_variants"] is None else s["fwd_variants"]
        bwd = "n/a" if s["bwd_variants"] is None else s["bwd_variants"]
        lines.append(f"| {s['T']} | {s['batch']} | {fwd} | {bwd} |")
    shown = [
        "n/a" if v2.get(f"recompiles_{k}") is None
        else fmt_meets(v2[f"recompiles_{k}"], ".0f", v2.get(f"meets_no_recompile_{k}"))
        for k in ("fwd", "bwd")
    ]  # fmt: skip
    lines += ["", f"Variants added after the first shape: fwd {shown[0]}, bwd {shown[1]}."]
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
        "`check_finite=True` and per-call parameter packing; for the version 2 rows "
        "`fused_ckpt*`, `fused_spikes_u8`, `fused_block*`: their median / the default fused "
        "median). Checkpoint rows show in brackets the model and % copy BW with the recompute "
        "scratch counted as DRAM traffic.",
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
        model_b = f"{r['model_bytes_per_neuron_step']:g}"
        if r.get("model_bytes_with_scratch") is not None:
            model_b += f" ({r['model_bytes_with_scratch']:g})"
            pct += f" ({fmt_num(r.get('fraction_of_copy_with_scratch'), '.0f', 100.0)})"
        lines.append(
            f"| {r['workload']} | {shape} | {r['dtype']} | {r['method']} | {r['mode']} | "
            f"{fmt_ms(r)} | {model_b} | "
            f"{fmt_num(r.get('achieved_gbps'))} | {pct} | {fmt_num(r['predicted_ms'], '.3f')} | "
            f"{speed} | {r.get('note') or r.get('timer') or ''} |"
        )
    lines += ["", *summary_lines(report), "", *v2_lines(report), ""]
    lines += [
        "Memory of one fwd+bwd (peak of `torch.cuda.max_memory_allocated` after "
        "`reset_peak_memory_stats`; above inputs = peak minus what was allocated before) and "
        "bytes saved for backward (`saved_tensors_hooks`, distinct tensors; new: storage not "
        "shared with an input, alias: same `untyped_storage()` as x, V0, w0 or the packed "
        "parameters).",
        "",
        "| workload | dtype | method | peak GiB | peak above inputs GiB | saved B/neuron-step | "
        "saved new | saved alias | first call s | spike mismatch vs fused | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in report["memory"]:
        lines.append(
            f"| {m['workload']} | {m['dtype']} | {m['method']} | "
            f"{fmt_num(m.get('peak_bytes'), '.2f', 1 / 2**30)} | "
            f"{fmt_num(m.get('peak_above_inputs_bytes'), '.2f', 1 / 2**30)} | "
            f"{fmt_num(m.get('saved_bytes_per_neuron_step'), '.2f')} | "
            f"{fmt_num(m.get('saved_new_bytes_per_neuron_step'), '.3f')} | "
            f"{fmt_num(m.get('saved_alias_bytes_per_neuron_step'), '.3f')} | "
            f"{m.get('first_call_s')} | {fmt_num(m.get('spike_mismatch_vs_fused'), '.2e')} | "
            f"{m.get('note', '')} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
